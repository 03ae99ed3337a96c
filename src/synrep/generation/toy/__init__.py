"""The toy text-to-image generator: GLIDE's recipe at toy scale, built from diffusers parts.

- ``text``: the word-level tokenizer and the small CLIP text encoder;
- ``pipeline``: ``ToyGlidePipeline``, a pixel-space diffusers pipeline with classifier-free guidance;
- ``train``: the training step (``run(cfg)``), whose output is a ``save_pretrained`` folder.
"""
