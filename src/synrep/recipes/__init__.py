"""Recipes: one ``run(cfg)`` per trained model (the toy generator, its inpainting fine-tune, the
toy unCLIP, DreamBooth, StyleGAN-NADA), each on the diffusion library."""
