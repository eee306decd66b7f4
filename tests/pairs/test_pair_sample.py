"""Paired sampling: draws from the seed, shared initial and per-step noise, layout sharing with p = 1."""

from __future__ import annotations

import pytest
import torch

from ip2p.pairs.sample import CandidateDraw, PairSampler, candidate_seed, draw_candidate


@pytest.fixture(scope="module")
def sampler(t2i):
    return PairSampler(t2i, device="cpu")


def test_draws_are_functions_of_the_seed_as_in_the_original():
    d = draw_candidate(123, (4, 16, 16))
    torch.manual_seed(123)  # the original: manual_seed(seed), then p and the scale from the CPU generator
    assert d.p == pytest.approx(0.1 + float(torch.rand(())) * 0.8)
    assert d.guidance_scale == pytest.approx(7.5 + float(torch.rand(())) * 7.5)
    again = draw_candidate(123, (4, 16, 16))
    assert torch.equal(d.noise, again.noise) and d.noise.shape == (1, 4, 16, 16)
    a, b = d.step_generators
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))  # the pair's per-step noise
    assert (
        candidate_seed(0, 5, 1)
        == candidate_seed(0, 5, 1)
        != candidate_seed(0, 5, 2)
        != candidate_seed(1, 5, 1)
    )


def test_p_zero_and_one_prompt_give_identical_images(sampler):
    shape = sampler.latent_shape(32)
    draws = [draw_candidate(s, shape, p_range=(0.0, 0.0)) for s in (1, 2)]
    batch = sampler("a red circle", "a red circle", draws, steps=3, resolution=32)
    assert torch.equal(batch.images_0, batch.images_1)
    assert not torch.equal(batch.images_0[0], batch.images_0[1])  # candidates differ
    assert batch.unet_calls == 3 and batch.images_0.shape == (2, 3, 32, 32)
    # The per-step noise matters: give image 1 a generator of its own and the images part.
    d = draws[0]
    other = torch.Generator().manual_seed(99)
    apart = CandidateDraw(
        d.seed, d.p, d.guidance_scale, d.noise, (draw_candidate(1, shape).step_generators[0], other)
    )
    split = sampler("a red circle", "a red circle", [apart], steps=3, resolution=32)
    assert not torch.equal(split.images_0, split.images_1)


def test_p_one_shares_the_layout_of_image_0(sampler):
    shape = sampler.latent_shape(32)
    captions = ("a red circle on the left", "two blue squares at night")
    plain = sampler(
        *captions, [draw_candidate(s, shape, p_range=(0.0, 0.0)) for s in (1, 2)], steps=4, resolution=32
    )
    copied = sampler(
        *captions, [draw_candidate(s, shape, p_range=(1.0, 1.0)) for s in (1, 2)], steps=4, resolution=32
    )
    torch.testing.assert_close(copied.images_0, plain.images_0, rtol=1e-4, atol=1e-5)  # image 0 ignores p
    apart = (plain.images_0 - plain.images_1).abs().mean()
    together = (copied.images_0 - copied.images_1).abs().mean()
    assert together < apart
    assert copied.p == [1.0, 1.0]


def test_candidates_of_several_triplets_share_a_batch(sampler):
    shape = sampler.latent_shape(32)
    first, second = ("a red circle", "a blue circle"), ("two green squares", "two green stars")
    draws = [draw_candidate(s, shape) for s in (1, 2, 3)]
    alone = [
        sampler(*first, draws[:2], steps=3, resolution=32),
        sampler(*second, draws[2:], steps=3, resolution=32),
    ]
    shared = sampler(
        [first[0], first[0], second[0]],
        [first[1], first[1], second[1]],
        [draw_candidate(s, shape) for s in (1, 2, 3)],  # fresh generators: they are consumed
        steps=3,
        resolution=32,
    )
    for name in ("images_0", "images_1"):
        expected = torch.cat([getattr(alone[0], name), getattr(alone[1], name)])
        torch.testing.assert_close(getattr(shared, name), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(shared.images_1[0], alone[1].images_1[0], atol=1e-3)  # the captions matter
    assert shared.unet_calls == 3
    with pytest.raises(ValueError, match="one caption pair"):
        sampler(["a", "b"], ["c", "d"], draws[:2], steps=1, resolution=32, mode="replace")
    with pytest.raises(ValueError, match="need 2 captions"):
        sampler(["a"], ["c"], draws[:2], steps=1, resolution=32)
