"""The loss probe: exact losses on a known predictor, determinism, and its one-line errors."""

import torch
from PIL import Image

from ip2p.cli import main
from ip2p.datasets import EditExample
from ip2p.loss_probe import ProbeError, loss_by_timestep, probe
from ip2p.tiny import tiny_components


class Zero(torch.nn.Module):
    """Predicts zeros: its loss is the mean square of the target, computable by hand."""

    def forward(self, x, t, encoder_hidden_states):
        return type("Out", (), {"sample": torch.zeros_like(x[:, :4])})()


def _examples(n=3):
    rng = torch.Generator().manual_seed(0)
    ims = [Image.fromarray((torch.rand(32, 32, 3, generator=rng) * 255).byte().numpy()) for _ in range(2 * n)]
    return [
        EditExample(ims[2 * i], f"make it {i}", ims[2 * i + 1], "a thing", f"a thing {i}") for i in range(n)
    ]


def test_zero_predictor_loss_is_the_targets_mean_square():
    from diffusers import DDPMScheduler

    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
        latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        got = loss_by_timestep(Zero(), sched, latents, torch.zeros(5, 2, 3), timesteps=(10, 900), seed=3)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
        for step in (10, 900):
            t = torch.full((5,), step)
            target = noise if kind == "epsilon" else sched.get_velocity(latents, noise, t)
            assert abs(got[step] - float((target**2).mean())) < 1e-5


def test_probe_runs_editors_and_base_on_the_same_noise():
    editor, base = tiny_components(edit=True), tiny_components(edit=False)
    exs = _examples()
    a = probe(exs, {"ed": editor}, base, timesteps=(100, 999), resolution=32, seed=0)
    b = probe(exs, {"ed": editor}, base, timesteps=(100, 999), resolution=32, seed=0)
    assert a == b and set(a) == {"ed", "base + output caption"}
    assert all(v > 0 for row in a.values() for v in row.values())
    assert probe(exs, {"ed": editor}, None, timesteps=(100,), resolution=32, seed=1)["ed"] != {
        100: a["ed"][100]
    }


def test_probe_refuses_bad_inputs():
    editor, base = tiny_components(edit=True), tiny_components(edit=False)
    exs = _examples()
    for call, message in [
        (lambda: probe([], {"ed": editor}), "no examples"),
        (lambda: probe(exs, {"b": base}, resolution=32), "not an editing model"),
        (lambda: probe(exs, {"ed": editor}, timesteps=(1000,), resolution=32), "outside"),
        (
            lambda: probe(
                [EditExample(exs[0].original_image, "x", exs[0].edited_image)], {}, base, resolution=32
            ),
            "output captions",
        ),
    ]:
        try:
            call()
        except ProbeError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"no error for {message}")


def test_cli_gives_a_one_line_error(tmp_path, capsys):
    assert main(["loss-probe", "--data", str(tmp_path / "missing"), "--editor", "tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ip2p: error:") and "\n" not in err
