import importlib
import json

import pytest
import torch

import esd_lora
from esd_lora.erase import frozen, target_modules
from esd_lora.errors import ConfigError, EmptyConceptError, NonFiniteLossError, NotAPipelineError
from esd_lora.families import family_of, load_pipeline

# What each method must put LoRA layers on, for the tiny SD 1.x UNet of tests/tiny_models.py.
XATTN = [f"{block}.attentions.{a}.transformer_blocks.0.attn2.{proj}"
         for block, a in (("down_blocks.0", 0), ("mid_block", 0), ("up_blocks.1", 0), ("up_blocks.1", 1))
         for proj in ("to_q", "to_k", "to_v", "to_out.0")]


def _linear_or_conv(unet):
    return {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@pytest.mark.parametrize("method, expected", [
    ("esd-x", lambda unet: set(XATTN)),
    ("esd-x-strict", lambda unet: {n for n in XATTN if n.endswith(("to_k", "to_v"))}),
    ("esd-u", lambda unet: {n for n in _linear_or_conv(unet) if ".attn2." not in n and n != "conv_out"
                            and not n.startswith("time_embedding.")}),
    ("esd-all", _linear_or_conv),
])
def test_each_method_targets_exactly_its_modules(sd1_pipe, method, expected):
    unet = sd1_pipe.unet
    names = set(target_modules(unet, method))
    assert names == expected(unet)
    if method == "esd-u":  # spot checks of the paper's definition
        assert {"conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.transformer_blocks.0"
                ".attn1.to_q", "down_blocks.0.resnets.0.time_emb_proj"} <= names
        assert not names & {"conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_trained_adapter_keys_are_the_methods_modules(sd1_pipe, method):
    adapter = esd_lora.erase(sd1_pipe, "red", method=method, iterations=1, ddim_steps=2, progress=False)
    modules = {k.removeprefix("unet.").split(".lora_")[0] for k in adapter.state_dict}
    assert modules == set(target_modules(sd1_pipe.unet, method))
    assert adapter.lora_config["target_modules"] == sorted(modules)


def test_only_the_adapter_trains_and_the_teacher_is_the_base(sd1_pipe):
    unet = sd1_pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor(500)
    cond = family_of(sd1_pipe).encode(["red"]).unet_kwargs()
    with torch.no_grad():
        reference = unet(x, t, **cond).sample
    checks = []

    def check(step, loss):
        with torch.no_grad():
            with frozen(unet):
                teacher = unet(x, t, **cond).sample
            student = unet(x, t, **cond).sample
        checks.append((torch.equal(teacher, reference), torch.equal(student, reference)))

    adapter = esd_lora.erase(sd1_pipe, "red", iterations=3, ddim_steps=3, lr=1e-2, progress=False, callback=check)
    assert checks == [(True, False)] * 3  # teacher bit-identical to the base; student moved
    assert not getattr(unet, "peft_config", None)  # the caller's pipeline is left as it was
    after = unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(v.abs().sum() > 0 for k, v in adapter.state_dict.items() if "lora_B" in k)


def test_seeded_training_is_reproducible(sd1_pipe):
    run = lambda: esd_lora.erase(sd1_pipe, ["red", "blue"], iterations=2, ddim_steps=3, seed=7,  # noqa: E731
                                 progress=False).state_dict
    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("options", [
    {"sample_with": "frozen"},
    {"sample_with": "frozen", "bank_size": 0},
    {"bank_size": 0},
    {"sample_with": "frozen", "bank_size": 2, "refresh_every": 1, "preserve": ["blue"]},
    {"bank_size": 3, "refresh_batch": 1},
    {"erase_from": "a shape"},
    {"method": "esd-x-strict", "eta": 2.0, "start_guidance": 1.0},
    {"preserve": ["blue", "a star"], "preserve_weight": 2.0},
    {"preserve": ["blue"], "erase_from": "a shape"},
    {"contexts": ["a {} star", "{} shape"], "preserve": ["blue"]},
])
def test_options_train(sd1_pipe, options):
    adapter = esd_lora.erase(sd1_pipe, ["red", "green"], iterations=2, ddim_steps=3, progress=False, **options)
    for key, value in options.items():
        assert getattr(adapter.metadata.config, key) == value
    assert adapter.metadata.final_loss >= 0


@pytest.mark.parametrize("sample_with", ["trained", "frozen"])  # frozen: the bank's cached e0 would be unconditional
def test_contexts_erase_each_concept_toward_its_context_without_it(sd1_pipe, monkeypatch, sample_with):
    """The teacher's e0 is the unconditional prediction for the bare concept, the context's for the concept in it."""
    erase_module = importlib.import_module("esd_lora.erase")
    hidden = {p: family_of(sd1_pipe).encode([p]).hidden for p in ("", "red", "a red star", "a star")}
    teacher_calls, original = [], erase_module._predict

    def spy(unet, x, t, texts):
        if len(texts) == 2 and not torch.is_grad_enabled():  # the teacher's e0 and ep (no preserved prompt)
            teacher_calls.append(tuple(next(p for p, h in hidden.items() if torch.allclose(h, c.hidden, atol=1e-5))
                                       for c in texts))
        return original(unet, x, t, texts)

    monkeypatch.setattr(erase_module, "_predict", spy)
    adapter = esd_lora.erase(sd1_pipe, "red", contexts=["a {} star"], sample_with=sample_with, iterations=12,
                             ddim_steps=2, progress=False)
    assert set(teacher_calls) == {("", "red"), ("a star", "a red star")}
    assert adapter.metadata.config.contexts == ["a {} star"] and adapter.metadata.config.concepts == ["red"]


def test_bank_reuses_the_frozen_guidance_passes_as_exact_teacher_predictions(sd1_pipe, monkeypatch):
    """With the frozen sampler, the bank's cached (e0, ep) equal a fresh frozen forward at the drawn x_t."""
    from esd_lora.erase import TrajectoryBank, _predict, frozen

    draws, refreshes = [], []
    original_draw, original_refresh = TrajectoryBank.draw, TrajectoryBank.refresh

    def draw(self, step):
        x, t, i, cached = original_draw(self, step)
        with torch.no_grad(), frozen(self.unet):
            fresh = _predict(self.unet, x, t, [self.uncond, self.concepts[i]])
        draws.append((cached, fresh))
        return x, t, i, cached

    def refresh(self):
        refreshes.append(len(draws))
        original_refresh(self)
        assert len(self.xs) == self.config.ddim_steps and self.xs[0].shape[0] == self.config.bank_size

    monkeypatch.setattr(TrajectoryBank, "draw", draw)
    monkeypatch.setattr(TrajectoryBank, "refresh", refresh)
    esd_lora.erase(sd1_pipe, ["red", "green"], sample_with="frozen", bank_size=3, refresh_every=2, iterations=5,
                   ddim_steps=4, lr=1e-2, progress=False)
    assert refreshes == [0, 2, 4]
    for cached, fresh in draws:
        for a, b in zip(cached, fresh):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sample_with", ["frozen", "trained"])
def test_bank_sampled_in_chunks_equals_the_bank_sampled_at_once(sd1_pipe, monkeypatch, sample_with):
    """refresh_batch only bounds memory: 5 trajectories sampled 2 at a time are the 5 sampled together."""
    from esd_lora.erase import TrajectoryBank

    banks = []
    original = TrajectoryBank.refresh

    def refresh(self):
        original(self)
        banks.append((self.config.refresh_batch, self.concept_of, self.xs, self.predictions))

    monkeypatch.setattr(TrajectoryBank, "refresh", refresh)
    for refresh_batch in (0, 2):
        esd_lora.erase(sd1_pipe, ["red", "green"], sample_with=sample_with, bank_size=5, refresh_batch=refresh_batch,
                       iterations=1, ddim_steps=3, progress=False)
    (_, concepts_at_once, xs_at_once, preds_at_once), (_, concepts_chunked, xs_chunked, preds_chunked) = banks
    assert concepts_at_once == concepts_chunked
    assert len(xs_chunked) == 3 and xs_chunked[0].shape[0] == 5
    torch.testing.assert_close(xs_chunked, xs_at_once, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(preds_chunked, preds_at_once, atol=1e-5, rtol=1e-4)
    assert bool(preds_chunked) == (sample_with == "frozen")


def test_trained_sampler_bank_asks_the_teacher(sd1_pipe, monkeypatch):
    from esd_lora.erase import TrajectoryBank

    seen = []
    original = TrajectoryBank.draw
    monkeypatch.setattr(TrajectoryBank, "draw", lambda self, step: seen.append(original(self, step)) or seen[-1])
    esd_lora.erase(sd1_pipe, "red", bank_size=2, iterations=2, ddim_steps=3, progress=False)
    assert len(seen) == 2 and all(cached is None for *_, cached in seen)  # x_t moved with the adapter


def test_lr_schedule_sets_each_steps_learning_rate(sd1_pipe, monkeypatch):
    """Linear decay over 4 iterations steps with lr, 3/4 lr, 1/2 lr, 1/4 lr; constant keeps lr throughout."""
    seen = {}
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.setdefault(schedule, []).append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for schedule in ("constant", "linear", "cosine"):
        adapter = esd_lora.erase(sd1_pipe, "red", iterations=4, ddim_steps=2, lr=1e-3, lr_schedule=schedule,
                                 progress=False)
        assert adapter.metadata.config.lr_schedule == schedule
    assert seen["constant"] == pytest.approx([1e-3] * 4)
    assert seen["linear"] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert seen["cosine"][0] == pytest.approx(1e-3) and seen["cosine"][2] == pytest.approx(5e-4)


def test_nan_loss_stops_and_writes_nothing(sd1_pipe, tmp_path):
    out = tmp_path / "nan.safetensors"
    with pytest.raises(NonFiniteLossError, match="iteration 1"):
        esd_lora.erase(sd1_pipe, "red", iterations=3, ddim_steps=2, eta=float("1e38"), start_guidance=1e38,
                       progress=False, out=out)
    assert list(tmp_path.iterdir()) == []
    assert not getattr(sd1_pipe.unet, "peft_config", None)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_erasing_a_folder_loads_no_vae_frees_the_text_encoders_and_trains_the_same(tiny_dirs, monkeypatch, family):
    """erase(folder) keeps only what training needs; erase(pipeline) leaves the caller's pipeline whole."""
    erase_module = importlib.import_module("esd_lora.erase")  # the module, not the function esd_lora.erase
    seen = []
    train = erase_module._train

    def spy(pipe, *args, **kwargs):
        loss = train(pipe, *args, **kwargs)
        seen.append({name: getattr(pipe, name, None) is not None for name in ("vae", "text_encoder", "text_encoder_2")})
        return loss

    monkeypatch.setattr(erase_module, "_train", spy)
    options = dict(iterations=2, ddim_steps=2, progress=False, device="cpu")
    from_folder = esd_lora.erase(str(tiny_dirs[family]), "red", **options)
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    from_pipeline = esd_lora.erase(pipe, "red", **options)
    two = family == "sdxl"
    assert seen == [{"vae": False, "text_encoder": False, "text_encoder_2": False},
                    {"vae": True, "text_encoder": True, "text_encoder_2": two}]
    assert from_folder.state_dict.keys() == from_pipeline.state_dict.keys()
    assert all(torch.equal(from_folder.state_dict[k], from_pipeline.state_dict[k]) for k in from_folder.state_dict)
    if family == "sd1":  # adversarial erasure encodes soft prompts while training: its text encoder stays
        esd_lora.erase(str(tiny_dirs[family]), "red", adversarial_every=1, adversarial_steps=1, **options)
        assert seen[-1]["text_encoder"]


def test_unknown_option_is_named(sd1_pipe):
    with pytest.raises(ConfigError, match="learning_rate.*valid options are.*lr"):
        esd_lora.erase(sd1_pipe, "red", learning_rate=1e-3)


def test_pipeline_with_loaded_adapters_is_refused(sd1_pipe, sd1_adapter):
    esd_lora.apply_adapters(sd1_pipe, [str(sd1_adapter)])
    with pytest.raises(ConfigError, match="unload_lora_weights"):
        esd_lora.erase(sd1_pipe, "red", iterations=1)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_base_trains_an_fp32_adapter(tiny_dirs, dtype):
    pipe = load_pipeline(tiny_dirs["sd1"], device="cpu", dtype=dtype)
    dtypes = set()

    def check(step, loss):
        dtypes.update(p.dtype for n, p in pipe.unet.named_parameters() if ".lora_" in n)

    adapter = esd_lora.erase(pipe, "red", iterations=3, ddim_steps=3, progress=False, callback=check)
    assert dtypes == {torch.float32}
    assert pipe.unet.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in adapter.state_dict.values())


def test_preservation_keeps_the_preserved_prompt_closer_to_the_base(sd1_pipe):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor(400)
    cond = family_of(sd1_pipe).encode(["blue"] * 4).unet_kwargs()
    drift = {}
    for preserve in ([], ["blue"]):
        def measure(step, loss):
            if step == 8:
                with torch.no_grad():
                    with frozen(sd1_pipe.unet):
                        before = sd1_pipe.unet(x, t, **cond).sample
                    drift[bool(preserve)] = (sd1_pipe.unet(x, t, **cond).sample - before).pow(2).mean().item()
        esd_lora.erase(sd1_pipe, "red", preserve=preserve, preserve_weight=10.0, iterations=8, ddim_steps=3,
                       lr=2e-2, progress=False, callback=measure)
    assert drift[True] < 0.5 * drift[False], drift


def _key_value_drift(unet, hidden):
    """Per attn2 to_k / to_v layer of a peft-wrapped UNet: |layer(h) - base(h)|^2 / |base(h)|^2 over ``hidden``."""
    drift = []
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(("attn2.to_k", "attn2.to_v")) and hasattr(module, "base_layer"):
                base = module.base_layer(hidden)
                drift.append(((module(hidden) - base).pow(2).sum() / base.pow(2).sum()).item())
    return drift


def test_key_value_anchor_is_the_adapters_relative_change_of_the_keys_and_values(sd1_pipe):
    from peft import LoraConfig

    from esd_lora.erase import ADAPTER_NAME, KeyValueAnchor, lora_config

    unet, family = sd1_pipe.unet, family_of(sd1_pipe)
    texts = [family.encode([p]) for p in ("", "blue", "a green star")]
    hidden = torch.cat([t.hidden for t in texts])
    config = esd_lora.EraseConfig(concepts=["red"])
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(**lora_config(unet, config)), adapter_name=ADAPTER_NAME)
    try:
        anchor = KeyValueAnchor(unet, texts)
        assert len(anchor.layers) == 8 and anchor.penalty().item() == 0  # to_k, to_v of 4 blocks; B starts at 0
        with torch.no_grad():
            for name, param in unet.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        drift = _key_value_drift(unet, torch.nn.functional.normalize(hidden, dim=-1))  # every token counts alike
        assert len(drift) == 8 and min(drift) > 0
        torch.testing.assert_close(anchor.penalty().item(), sum(drift) / len(drift), rtol=1e-4, atol=0)
        anchor.penalty().backward()  # a loss term: the gradient reaches the LoRA weights
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_" in n)
    finally:
        unet.unload_lora()


def test_preserve_text_weight_keeps_the_preserved_keys_and_values(sd1_pipe):
    hidden = family_of(sd1_pipe).encode(["", "blue"]).hidden
    drift = {}
    for weight in (0.0, 100.0):
        def measure(step, loss):
            if step == 8:
                drift[weight] = max(_key_value_drift(sd1_pipe.unet, hidden))
        adapter = esd_lora.erase(sd1_pipe, "red", method="esd-x-strict", preserve=["blue"], preserve_weight=0.0,
                                 preserve_text_weight=weight, iterations=8, ddim_steps=3, lr=2e-2, progress=False,
                                 callback=measure)
        assert adapter.metadata.config.preserve_text_weight == weight
    assert drift[100.0] < 0.2 * drift[0.0], drift


@pytest.mark.parametrize("bank_size", [0, 2])  # a fresh trajectory every step, or a bank of them
@pytest.mark.parametrize("sample_with", ["trained", "frozen"])
def test_preserve_at_own_keeps_the_preserved_prompts_on_their_own_frozen_trajectories(sd1_pipe, monkeypatch,
                                                                                       bank_size, sample_with):
    """The preservation term compares the trained and the frozen prediction for the preserved prompt at an x_t that
    the frozen base sampled for that prompt, not at the erased concept's x_t."""
    erase_module = importlib.import_module("esd_lora.erase")
    hidden = {p: family_of(sd1_pipe).encode([p]).hidden for p in ("red", "blue", "green")}
    drawn, pairs = [], []  # (source, x_t, t, prompt) of every draw; (student, teacher) of the preservation term

    def name(conditioning):
        return next(p for p, h in hidden.items() if torch.allclose(h, conditioning.hidden, atol=1e-5))

    for cls in (erase_module.Resampler, erase_module.TrajectoryBank):
        def draw(self, step, _original=cls.draw):
            x, t, i, cached = _original(self, step)
            drawn.append((self, x, t, name(self.concepts[i])))
            return x, t, i, cached
        monkeypatch.setattr(cls, "draw", draw)
    original_loss = erase_module.preservation_loss

    def preservation_loss(student, teacher):
        pairs.append((student.detach(), teacher))
        return original_loss(student, teacher)

    monkeypatch.setattr(erase_module, "preservation_loss", preservation_loss)
    students, original_predict = [], erase_module._predict

    def predict(unet, x, t, texts):
        if torch.is_grad_enabled():
            students.append((x, [name(c) for c in texts]))
        return original_predict(unet, x, t, texts)

    monkeypatch.setattr(erase_module, "_predict", predict)
    esd_lora.erase(sd1_pipe, "red", preserve=["blue", "green"], preserve_at="own", preserve_weight=4.0,
                   bank_size=bank_size, sample_with=sample_with, iterations=6, ddim_steps=3, lr=1e-2, progress=False)
    erased, own = drawn[0::2], drawn[1::2]  # each step draws the erased concept's x_t, then the preserved one's
    assert {p for _, _, _, p in erased} == {"red"} and {p for _, _, _, p in own} <= {"blue", "green"}
    assert {s.config.sample_with for s, *_ in own} == {"frozen"} and len(pairs) == 6
    assert all(s.config.sample_with == sample_with for s, *_ in erased)
    assert not any(torch.equal(xe, xo) for (_, xe, _, _), (_, xo, _, _) in zip(erased, own))
    # the trained model sees the concept at its x_t and the preserved prompt at the preserved x_t
    expected = [item for (_, xe, _, _), (_, xo, _, p) in zip(erased, own) for item in ((xe, ["red"]), (xo, [p]))]
    assert len(students) == len(expected) == 12
    assert all(x is x_want and names == want for (x, names), (x_want, want) in zip(students, expected))
    with torch.no_grad():  # the teacher is the frozen prediction at the preserved x_t (erase left the base as it was)
        for (_, x, t, prompt), (_, teacher) in zip(own, pairs):
            expected = sd1_pipe.unet(x, t, **family_of(sd1_pipe).encode([prompt]).unet_kwargs()).sample
            torch.testing.assert_close(teacher.float(), expected.float(), atol=1e-4, rtol=1e-4)


def test_base_recommended_settings_apply_under_explicit_options(recommending_base):
    from esd_lora.config import EraseConfig
    from esd_lora.erase import make_config

    config = make_config(recommending_base, "red", ddim_steps=2)
    assert (config.lr, config.iterations, config.ddim_steps) == (0.01, 2, 2)
    assert config.preserve == ["blue", "dotted"]  # the anchors, less those naming the erased concept
    assert config.contexts == ["a {} toy"]
    assert make_config(recommending_base, ["red", "dotted"]).preserve == ["blue"]
    assert make_config(recommending_base, "red", preserve=[]).preserve == []  # explicit wins
    assert make_config(recommending_base, "red", lr=0.5).lr == 0.5
    assert make_config(recommending_base, "red", EraseConfig(["red"])).lr == EraseConfig(["red"]).lr  # a full config
    adapter = esd_lora.erase(recommending_base, "red", ddim_steps=2, progress=False, device="cpu")
    assert adapter.metadata.config.lr == 0.01  # the file records what was really used


def test_scene_contexts_put_the_slot_where_the_concept_was(tmp_path, recommending_base):
    from esd_lora.erase import make_config, recommended_contexts, scene_contexts

    scenes = ["striped red circle", "solid red star", "striped blue circle", "solid blue star", "a Red Hat",
              "ordered shapes", "striped red circle"]
    assert scene_contexts(scenes, ["red"]) == {"red": ["striped {} circle", "solid {} star", "a {} Hat"]}  # words, once
    assert scene_contexts(scenes, ["striped blue"]) == {"striped blue": ["{} circle"]}
    assert scene_contexts(scenes, ["star", "circle"]) == {"star": ["solid red {}", "solid blue {}"],
                                                          "circle": ["striped red {}", "striped blue {}"]}
    assert scene_contexts(scenes, ["green"]) == {}
    # one option for the erasure: shared contexts when every concept has the same, else each concept its own
    assert recommended_contexts(["striped red circle", "striped blue circle"], ["red", "blue"]) == \
        {"contexts": ["striped {} circle"]}
    assert recommended_contexts(scenes, ["green"]) == {"contexts": []}
    with pytest.raises(EmptyConceptError, match="no concept given"):  # not an IndexError from the scenes
        make_config("bundled", [])
    assert recommended_contexts(scenes, ["red", "green"]) == \
        {"concept_contexts": {"red": ["striped {} circle", "solid {} star", "a {} Hat"]}}
    assert scene_contexts(scenes, ["red", "star"])["red"] == ["striped {} circle", "a {} Hat"]  # not 'solid red star'

    settings = json.loads((recommending_base / "esd_lora.json").read_text())
    settings["erase"].pop("contexts")
    settings["scenes"] = scenes
    (recommending_base / "esd_lora.json").write_text(json.dumps(settings))
    assert make_config(recommending_base, "red").contexts == ["striped {} circle", "solid {} star", "a {} Hat"]
    assert make_config(recommending_base, "red", contexts=["a {} toy"]).contexts == ["a {} toy"]  # explicit wins
    assert make_config(recommending_base, "red", contexts=[]).contexts == []  # --no-contexts
    # a colour and a shape: each in its own scenes, less those naming both ("solid red star" toward "solid star"
    # would teach star back)
    mixed = make_config(recommending_base, ["red", "star"])
    assert mixed.contexts == [] and mixed.concept_contexts == {"red": ["striped {} circle", "a {} Hat"],
                                                               "star": ["solid blue {}"]}
    assert ("striped red circle", "striped circle") in mixed.targets() and ("solid blue star", "solid blue") in \
        mixed.targets()
    assert not any("star" in (toward or "") or "red" in (toward or "") for _, toward in mixed.targets())
    no_scenes = make_config(recommending_base, ["red", "star"], contexts=[])  # --no-contexts: no scenes at all
    assert (no_scenes.contexts, no_scenes.concept_contexts) == ([], {})
    # a recommendation that does not go with an explicit option gives way to it
    assert make_config(recommending_base, "red", adversarial_every=2).contexts == []
    settings["erase"]["preserve_text_weight"] = 3.0
    (recommending_base / "esd_lora.json").write_text(json.dumps(settings))
    assert make_config(recommending_base, "red").preserve_text_weight == 3.0
    assert make_config(recommending_base, "red", method="esd-u").preserve_text_weight == 0.0
    with pytest.raises(ConfigError, match="preserve_text_weight holds cross-attention"):
        make_config(recommending_base, "red", method="esd-u", preserve_text_weight=3.0)  # both explicit


def test_the_bundled_base_recommends_its_scenes_as_contexts():
    from esd_lora.erase import make_config

    red, star = make_config("bundled", "red"), make_config("bundled", "star")
    assert len(red.contexts) == 5 * 4 and "dotted {} star" in red.contexts  # every shape x pattern
    assert len(star.contexts) == 4 * 4 and "checkered green {}" in star.contexts  # every colour x pattern
    assert (red.method, red.eta, red.preserve_text_weight) == ("esd-x-strict", 0.5, 10.0)
    assert "red" not in red.preserve and len(red.preserve) == 12
    mixed = make_config("bundled", ["red", "star"])  # a colour and a shape share no contexts: each gets its own,
    assert mixed.contexts == []  # less the scenes of red stars
    assert mixed.concept_contexts == {"red": [c for c in red.contexts if not c.endswith(" star")],
                                      "star": [c for c in star.contexts if " red " not in c]}
    assert (len(mixed.concept_contexts["red"]), len(mixed.concept_contexts["star"])) == (16, 12)


def test_a_base_recommends_settings_for_some_concepts(recommending_base):
    """``by_concept``: a group's settings go on top of the base's for an erasure of its concepts only, and an
    explicit option still wins."""
    from esd_lora.erase import make_config, recommended_start

    settings = json.loads((recommending_base / "esd_lora.json").read_text())
    settings["erase"].pop("contexts")
    settings["scenes"] = ["striped red star", "solid blue star", "striped red circle"]
    settings["by_concept"] = [{"concepts": ["Star", "circle"], "erase": {"eta": 2.0, "contexts": []}},
                              {"concepts": ["star", "blue"], "erase": {"lr": 0.5, "preserve": ["a toy"]}}]
    (recommending_base / "esd_lora.json").write_text(json.dumps(settings))

    star = make_config(recommending_base, "star")
    assert (star.eta, star.lr, star.contexts) == (2.0, 0.01, [])  # the group on top; its [] turns the scenes off
    assert star.preserve == ["red", "blue", "dotted"]  # the anchors, as without a group
    assert make_config(recommending_base, ["STAR", " circle "]).eta == 2.0  # every concept in the first group
    assert make_config(recommending_base, "star", eta=0.5).eta == 0.5  # explicit wins
    red = make_config(recommending_base, "red")  # no group names red: the base's settings and its scenes
    assert (red.eta, red.lr, red.contexts) == (1.0, 0.01, ["striped {} star", "striped {} circle"])
    blue = make_config(recommending_base, "blue")  # the second group: its preserve replaces the anchors
    assert (blue.lr, blue.preserve, blue.eta) == (0.5, ["a toy"], 1.0)
    mixed = make_config(recommending_base, ["star", "red"])  # not all in one group: none applies
    assert (mixed.eta, mixed.lr) == (1.0, 0.01)
    assert recommended_start(recommending_base, "circle", {})[2] == ["Star", "circle"]
    assert recommended_start(recommending_base, "red", {})[2] is None
    adapter = esd_lora.erase(recommending_base, "star", ddim_steps=2, progress=False, device="cpu")
    assert adapter.metadata.config.eta == 2.0  # the file records the group's settings


def test_erase_says_which_concepts_settings_it_uses(recommending_base, tmp_path, capsys):
    from esd_lora.cli import main

    settings = json.loads((recommending_base / "esd_lora.json").read_text())
    settings["by_concept"] = [{"concepts": ["red", "crimson"], "erase": {"eta": 2.0, "contexts": []}}]
    (recommending_base / "esd_lora.json").write_text(json.dumps(settings))
    out = tmp_path / "red.safetensors"
    assert main(["erase", "red", "--base", str(recommending_base), "--ddim-steps", "2", "--out", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("using the settings"))
    assert "(with its settings for red, crimson)" in line and "eta=2.0" in line and "contexts=[]" in line


@pytest.mark.parametrize("content, error, match", [
    ('{"erase": {"learning_rate": 1}}', ConfigError, "recommends unknown option"),
    ('{"scenes": [1, 2]}', NotAPipelineError, "'scenes' is not a list of prompts"),
    ('{"erase": [1]}', NotAPipelineError, "not a valid esd-lora settings file"),
    ('{"anchors": "red"}', NotAPipelineError, "not a list of prompts"),
    ('{"erase": {}, "anchor": ["red"]}', NotAPipelineError, "unknown key\\(s\\) 'anchor'; the keys are erase, "),
    ('{"by_concept": {"red": {}}}', NotAPipelineError, "'by_concept' is not a list"),
    ('{"by_concept": [{"concepts": ["red"]}]}', NotAPipelineError, "a 'by_concept' entry is not"),
    ('{"by_concept": [{"concepts": [], "erase": {}}]}', NotAPipelineError, "a 'by_concept' entry is not"),
    ('{"by_concept": [{"concepts": ["red"], "erase": {"etaa": 1}}]}', ConfigError, "recommends unknown option"),
    ("not json", NotAPipelineError, "not a valid esd-lora settings file"),
])
def test_bad_settings_file_is_named(recommending_base, content, error, match):
    from esd_lora.erase import make_config

    (recommending_base / "esd_lora.json").write_text(content)
    with pytest.raises(error, match=match):
        make_config(recommending_base, "red")


def test_cli_says_which_recommended_settings_it_uses_and_turns_them_off(recommending_base, tmp_path, capsys):
    from esd_lora.cli import main
    from esd_lora.cli.erase import _brief

    out = tmp_path / "no-red.safetensors"
    erase = ["erase", "red", "--base", str(recommending_base), "--ddim-steps", "2", "--out", str(out), "--overwrite"]
    assert main(erase) == 0
    said = capsys.readouterr().out
    assert "lr=0.01" in said and "contexts=['a {} toy']" in said and "preserve=['blue', 'dotted']" in said
    assert esd_lora.load_adapter(out).metadata.config.preserve == ["blue", "dotted"]
    assert main(erase + ["--preserve", "green", "--lr", "0.02"]) == 0
    said = capsys.readouterr().out
    assert "lr=" not in said and "preserve=" not in said and "iterations=2" in said  # what was given is not "used"
    assert main(erase + ["--no-preserve", "--no-contexts"]) == 0  # plain ESD on this base
    config = esd_lora.load_adapter(out).metadata.config
    assert config.contexts == [] and config.preserve == [] and config.lr == 0.01
    said = capsys.readouterr().out
    assert "preserve=" not in said and "contexts=" not in said
    assert _brief(list("abcdef")) == "['a', 'b', 'c', 'd', ... 6 in all]" and _brief([1, 2]) == "[1, 2]"
    assert _brief({"red": list("abcdef"), "star": ["x"]}) == \
        "{'red': ['a', 'b', 'c', 'd', ... 6 in all], 'star': ['x']}"


def test_gradient_checkpointing_recomputes_the_same_training_and_is_undone(sd1_pipe, monkeypatch):
    import torch.utils.checkpoint

    unet, calls, states = sd1_pipe.unet, [], []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    run = lambda **options: esd_lora.erase(sd1_pipe, "red", iterations=2, ddim_steps=3, lr=1e-2,  # noqa: E731
                                           progress=False, **options).state_dict
    plain = run()
    assert not calls  # off by default
    checkpointed = run(gradient_checkpointing=True,
                       callback=lambda step, loss: states.append(unet.is_gradient_checkpointing))
    assert calls and states == [True, True]
    assert not unet.is_gradient_checkpointing  # restored for the caller
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key])


@pytest.mark.slow
def test_compiled_forward_keeps_the_adapter_switch_and_is_undone(sd1_pipe, monkeypatch):
    """The compiled UNet equals the eager one with the adapter on and off, during training; after, it is gone.

    The test compiles with the aot_eager backend (graph capture, guards and autograd as with inductor, without
    minutes of C++ code generation on a CPU runner).
    """
    import functools

    compiled = []
    compile_eager = functools.partial(torch.compile, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or compile_eager(fn))
    unet = sd1_pipe.unet
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor(500)
    cond = family_of(sd1_pipe).encode(["red"]).unet_kwargs()
    gaps = []

    def compare(step, loss):
        with torch.no_grad():
            with frozen(unet):
                gaps.append(("off", unet(x, t, **cond).sample, type(unet).forward(unet, x, t, **cond).sample))
            gaps.append(("on", unet(x, t, **cond).sample, type(unet).forward(unet, x, t, **cond).sample))

    esd_lora.erase(sd1_pipe, "red", iterations=2, ddim_steps=3, bank_size=2, lr=1e-2, compile=True,
                   progress=False, callback=compare)
    assert len(compiled) == 1 and "forward" not in vars(unet)  # compiled once, then the class forward again
    assert [state for state, *_ in gaps] == ["off", "on"] * 2
    for _, fast, eager in gaps:
        torch.testing.assert_close(fast, eager)
    on, off = gaps[-1][1], gaps[-2][1]
    assert not torch.allclose(on, off)  # the switch really changes the compiled model's output
