import pytest
import torch

from esd_lora.objective import esd_loss, esd_target, guided, preservation_loss, to_epsilon


@pytest.fixture
def preds():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, 8, 8, generator=g) for _ in range(4)]  # e0, ep, en, x_t


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.5])
def test_target_and_loss_match_hand_computation(preds, eta):
    e0, ep, en, _ = preds
    target = e0 - eta * (ep - e0)  # the paper's form
    assert torch.allclose(esd_target(e0, ep, eta), target)
    by_hand = ((en - target) ** 2).sum() / en.numel()
    assert torch.allclose(esd_loss(en, e0, ep, eta), by_hand, rtol=1e-6)


def test_authors_later_form_is_paper_form_with_eta_plus_one(preds):
    e0, ep, _, _ = preds
    later_code_target = ep - 2.0 * (ep - e0)  # esd_sd.py, default eta=2
    assert torch.allclose(esd_target(e0, ep, 1.0), later_code_target, atol=1e-6)


def test_loss_gives_no_gradient_to_teacher(preds):
    e0, ep, en, _ = (p.clone().requires_grad_() for p in preds)
    esd_loss(en, e0, ep, 1.0).backward()
    assert e0.grad is None and ep.grad is None and en.grad is not None


def test_loss_is_fp32_for_half_inputs(preds):
    e0, ep, en, _ = (p.half() for p in preds)
    assert esd_loss(en, e0, ep, 1.0).dtype == torch.float32


@pytest.mark.parametrize("alpha_bar", [0.05, 0.5, 0.97])
@pytest.mark.parametrize("eta", [1.0, 3.0])
def test_v_prediction_target_is_the_epsilon_target(preds, alpha_bar, eta):
    """Built from v-predictions, the target is the epsilon-space target expressed in v."""
    v0, vp, _, x_t = preds
    eps = lambda v: to_epsilon(v, x_t, alpha_bar, "v_prediction")  # noqa: E731
    target_in_v = esd_target(v0, vp, eta)
    assert torch.allclose(eps(target_in_v), esd_target(eps(v0), eps(vp), eta), atol=1e-5)


def test_to_epsilon_inverts_the_v_definition():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    ab = torch.tensor(0.3)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert torch.allclose(to_epsilon(v, x_t, ab, "v_prediction"), noise, atol=1e-6)
    assert to_epsilon(noise, x_t, ab, "epsilon") is noise
    with pytest.raises(ValueError, match="prediction_type"):
        to_epsilon(v, x_t, ab, "sample")


def test_guided(preds):
    u, c, _, _ = preds
    assert torch.allclose(guided(u, c, 1.0), c, atol=1e-6)
    assert torch.allclose(guided(u, c, 0.0), u)
    assert torch.allclose(guided(u, c, 3.0), u + 3 * (c - u))


def test_preservation_loss(preds):
    student, teacher, _, _ = (p.clone().requires_grad_() for p in preds)
    loss = preservation_loss(student, teacher)
    assert torch.allclose(loss, ((student - teacher) ** 2).mean())
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert preservation_loss(teacher, teacher).item() == 0
