"""The toy pipelines: GLIDE-like text-to-image, its inpainting form, and unCLIP (prior and decoder)
over the toy CLIP, each a diffusers DiffusionPipeline saved and loaded as one."""
