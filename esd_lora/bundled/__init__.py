"""Offline concept world, its judge and a tiny Stable-Diffusion-architecture base model."""
