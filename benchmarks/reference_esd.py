"""The paper's ESD-x training loop, written out as the baseline of benchmarks/speed.py (not part of the library).

As in Gandikota et al. 2023 and the authors' train-esd.py:

* two UNets in memory: the frozen original and a deep copy that is trained;
* the copy's cross-attention is trained in full, no LoRA: every parameter with ``attn2`` in its name (to_q,
  to_k, to_v, to_out), the authors' ``xattn`` method;
* every iteration draws a concept and a stopping step ``k`` and samples ``x_t`` afresh: ``k`` DDIM steps from
  pure noise with classifier-free guidance (``start_guidance``), by the *trained* copy;
* the frozen UNet predicts ``e0`` (unconditional) and ``ep`` (the concept) in two separate forwards;
* Adam steps on ``MSE(en, e0 - eta * (ep - e0))``, ``en`` being the trained copy's prediction for the concept.

The one simplification: the UNet is asked at the DDIM step's own timestep, where the authors' code draws a DDPM
timestep inside the same interval; it costs the same. The objective (guidance, target, MSE) is esd-lora's, so the
two loops differ only in how they get there.
"""

from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler

from esd_lora.families import family_of
from esd_lora.objective import esd_loss, guided


class ReferenceESD:
    """One ESD-x training run of the paper's loop on ``pipe`` (whose UNet becomes the frozen original)."""

    def __init__(self, pipe, concepts: list[str], *, lr: float, eta: float = 1.0, start_guidance: float = 3.0,
                 ddim_steps: int = 50, stop_at: int | None = None, seed: int = 0) -> None:
        family = family_of(pipe)
        self.latent_shape, self.eta, self.start_guidance = family.latent_shape, eta, start_guidance
        self.stop_at, self.ddim_steps = stop_at, ddim_steps
        self.frozen = pipe.unet.requires_grad_(False)
        self.trained = copy.deepcopy(pipe.unet)
        params = [p.requires_grad_(True) for name, p in self.trained.named_parameters() if "attn2" in name]
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.sampler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sampler.set_timesteps(ddim_steps, device=self.frozen.device)
        texts = family.encode(["", *concepts])
        self.uncond, self.concepts = texts[0], [texts[1 + i] for i in range(len(concepts))]
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> float:
        """One iteration; returns the loss."""
        unet, g = self.trained, self.generator
        concept = self.concepts[int(torch.randint(len(self.concepts), (1,), generator=g))]
        k = self.stop_at if self.stop_at is not None else int(torch.randint(self.ddim_steps, (1,), generator=g))
        x = torch.randn((1, *self.latent_shape), generator=g).to(unet.device, unet.dtype)
        x = x * self.sampler.init_noise_sigma
        pair = type(concept).cat([self.uncond, concept]).unet_kwargs()
        with torch.no_grad():
            for t in self.sampler.timesteps[:k]:  # a fresh partial trajectory, by the trained copy
                u, c = unet(torch.cat([x, x]), t, **pair).sample.chunk(2)
                x = self.sampler.step(guided(u, c, self.start_guidance), t, x).prev_sample
            t = self.sampler.timesteps[k]
            e0 = self.frozen(x, t, **self.uncond.unet_kwargs()).sample
            ep = self.frozen(x, t, **concept.unet_kwargs()).sample
        loss = esd_loss(unet(x, t, **concept.unet_kwargs()).sample, e0, ep, self.eta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def file_bytes(self) -> int:
        """Bytes of what the run must save: the whole trained UNet (the authors' script saves the whole model,
        text encoder and VAE too, so this is a lower bound)."""
        return sum(t.numel() * t.element_size() for t in self.trained.state_dict().values())
