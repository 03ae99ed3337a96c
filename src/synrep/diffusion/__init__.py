"""The diffusion library: pipelines (diffusers' and the toy ones), samplers, CLIP guidance, the
source modes' sampling and the denoising loss. It trains nothing and makes no shards."""
