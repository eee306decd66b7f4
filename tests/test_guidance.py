import pytest
import torch

from ip2p.guidance import apply_conditioning_dropout, conditioning_dropout_masks, dual_guidance


def _eps(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]


def test_both_scales_one_gives_the_conditional_prediction():
    e_ti, e_i, e_u = _eps(0)
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_u, 1.0, 1.0), e_ti)


def test_zero_scales_give_the_unconditional_prediction():
    e_ti, e_i, e_u = _eps(1)
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_u, 0.0, 0.0), e_u)


def test_text_scale_zero_image_scale_one_gives_the_image_conditional_prediction():
    e_ti, e_i, e_u = _eps(2)
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_u, 0.0, 1.0), e_i)


def test_guidance_matches_the_paper_formula():
    e_ti, e_i, e_u = _eps(3)
    s_t, s_i = 7.5, 1.5
    expected = e_u + s_i * (e_i - e_u) + s_t * (e_ti - e_i)
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_u, s_t, s_i), expected)


def test_guidance_is_linear_in_each_scale():
    e_ti, e_i, e_u = _eps(4)
    a = dual_guidance(e_ti, e_i, e_u, 2.0, 1.0)
    b = dual_guidance(e_ti, e_i, e_u, 3.0, 1.0)
    c = dual_guidance(e_ti, e_i, e_u, 4.0, 1.0)
    torch.testing.assert_close(b - a, c - b)
    torch.testing.assert_close(b - a, e_ti - e_i)


def test_guidance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        dual_guidance(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(2, 4), 7.5, 1.5)


def test_dropout_frequencies_and_disjoint_cases():
    r = torch.rand(400_000, generator=torch.Generator().manual_seed(0))
    drop_text, drop_image = conditioning_dropout_masks(r, 0.05)
    text_only = (drop_text & ~drop_image).float().mean().item()
    both = (drop_text & drop_image).float().mean().item()
    image_only = (~drop_text & drop_image).float().mean().item()
    assert text_only == pytest.approx(0.05, abs=0.002)
    assert both == pytest.approx(0.05, abs=0.002)
    assert image_only == pytest.approx(0.05, abs=0.002)
    assert (~drop_text & ~drop_image).float().mean().item() == pytest.approx(0.85, abs=0.003)


def test_dropout_cases_follow_the_original_thresholds():
    r = torch.tensor([0.0, 0.049, 0.05, 0.099, 0.10, 0.149, 0.15, 0.9])
    drop_text, drop_image = conditioning_dropout_masks(r, 0.05)
    assert drop_text.tolist() == [True, True, True, True, False, False, False, False]
    assert drop_image.tolist() == [False, False, True, True, True, True, False, False]


def test_apply_dropout_uses_the_null_text_and_zero_image():
    text = torch.randn(4, 5, 6)
    image = torch.randn(4, 4, 2, 2)
    null = torch.randn(1, 5, 6)
    r = torch.tensor([0.01, 0.07, 0.12, 0.5])  # text only, both, image only, none
    t, i = apply_conditioning_dropout(text, image, null, r, 0.05)
    torch.testing.assert_close(t[0], null[0])
    torch.testing.assert_close(t[1], null[0])
    torch.testing.assert_close(t[2], text[2])
    torch.testing.assert_close(t[3], text[3])
    torch.testing.assert_close(i[0], image[0])
    assert i[1].abs().sum() == 0 and i[2].abs().sum() == 0
    torch.testing.assert_close(i[3], image[3])


def test_dropout_rejects_a_bad_probability():
    with pytest.raises(ValueError, match="0.5"):
        conditioning_dropout_masks(torch.rand(3), 0.5)
