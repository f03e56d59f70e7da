"""Text-conditioned diffusion thumbnails for items without images."""
