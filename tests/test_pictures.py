"""Reconstruction pictures: what they show, and what they must not leak."""

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mae_from_scratch import MaskedAutoencoderViT, normalize_patches, patchify, unpatchify  # noqa: E402
from mae_from_scratch.photos import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from mae_from_scratch.loss import unnormalize_patches  # noqa: E402
from mae_from_scratch.pictures import reconstruct, show_reconstructions  # noqa: E402


def _change_hidden_patches(imgs, mask, p, gen):
    """``imgs`` with every removed patch (mask 1) replaced by different pixels."""
    x = patchify(imgs, p)
    other = 3.0 * torch.randn(x.shape, generator=gen) + 2.0
    x = torch.where(mask.bool()[..., None], other, x)
    return unpatchify(x, p, imgs.shape[1])


def _setup(micro_config, norm_pix_loss, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = MaskedAutoencoderViT(**micro_config, norm_pix_loss=norm_pix_loss)
    imgs = torch.randn(3, 3, 32, 32, generator=gen)
    noise = torch.rand(3, 64, generator=gen)
    return model, imgs, noise, gen


def test_visible_stats_use_nothing_from_hidden_patches():
    gen = torch.Generator().manual_seed(0)
    pred, patches = torch.randn(2, 16, 12, generator=gen), torch.randn(2, 16, 12, generator=gen)
    mask = torch.zeros(2, 16)
    mask[:, ::3] = 1
    changed = torch.where(mask.bool()[..., None], 5 * torch.randn(2, 16, 12, generator=gen) - 4, patches)
    a = unnormalize_patches(pred, patches, mask, stats="visible")
    b = unnormalize_patches(pred, changed, mask, stats="visible")
    assert torch.equal(a, b)
    # The true statistics do depend on the hidden pixels: that is the leak.
    hidden = mask.bool()
    a_true = unnormalize_patches(pred, patches, mask, stats="true")
    b_true = unnormalize_patches(pred, changed, mask, stats="true")
    assert not torch.allclose(a_true[hidden], b_true[hidden])
    torch.testing.assert_close(a_true[~hidden], b_true[~hidden])


def test_visible_stats_give_removed_patches_the_visible_average():
    patches = torch.stack([torch.full((4,), 1.0), torch.tensor([0.0, 2.0, 0.0, 2.0]), torch.full((4,), 9.0)])[None]
    mask = torch.tensor([[0.0, 0.0, 1.0]])
    out = unnormalize_patches(torch.ones(1, 3, 4), patches, mask, stats="visible")
    mean_vis = (1.0 + 1.0) / 2  # the two visible patches' means
    std_vis = ((0.0 + 1e-6) ** 0.5 + (4 / 3 + 1e-6) ** 0.5) / 2  # their sqrt(unbiased var + eps)
    torch.testing.assert_close(out[0, 2], torch.full((4,), mean_vis + std_vis))


def test_true_stats_invert_normalize_patches():
    x = torch.randn(2, 10, 48, generator=torch.Generator().manual_seed(1)) * 3 + 1
    torch.testing.assert_close(unnormalize_patches(normalize_patches(x), x, stats="true"), x)


def test_unnormalize_rejects_bad_arguments():
    x = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="mask"):
        unnormalize_patches(x, x, None, stats="visible")
    with pytest.raises(ValueError, match="stats"):
        unnormalize_patches(x, x, torch.zeros(1, 4), stats="hidden")


def test_reconstruct_with_visible_stats_ignores_hidden_pixels(micro_config):
    model, imgs, noise, gen = _setup(micro_config, norm_pix_loss=True)
    out = reconstruct(model, imgs, noise=noise, stats="visible")
    changed = _change_hidden_patches(imgs, out["mask"], model.patch_size, gen)
    assert not torch.allclose(changed, imgs)
    out2 = reconstruct(model, changed, noise=noise, stats="visible")
    assert torch.equal(out["mask"], out2["mask"])
    torch.testing.assert_close(out2["pred"], out["pred"])
    torch.testing.assert_close(out2["pasted"], out["pasted"])
    # With the true statistics the same change shows up in the picture.
    out_true = reconstruct(model, imgs, noise=noise, stats="true")
    out_true2 = reconstruct(model, changed, noise=noise, stats="true")
    assert not torch.allclose(out_true["pred"], out_true2["pred"])


def test_reconstruct_plain_targets_pastes_visible_pixels(micro_config):
    model, imgs, noise, gen = _setup(micro_config, norm_pix_loss=False)
    out = reconstruct(model, imgs, noise=noise)
    p = model.patch_size
    visible = ~out["mask"].bool()
    pasted, pred, real = patchify(out["pasted"], p), patchify(out["pred"], p), patchify(imgs, p)
    assert torch.equal(pasted[visible], real[visible])
    assert torch.equal(pasted[~visible], pred[~visible])
    # A plain-pixel model's prediction does not depend on the hidden pixels at all, whatever stats says.
    changed = _change_hidden_patches(imgs, out["mask"], p, gen)
    torch.testing.assert_close(reconstruct(model, changed, noise=noise, stats="true")["pred"], out["pred"])


def test_pictures_takes_what_it_draws_from_snapshots():
    """One computation of masks and reconstructions (snapshots, no matplotlib); pictures draws it."""
    from mae_from_scratch import pictures, snapshots

    assert pictures.reconstruct is snapshots.reconstruct and pictures.masked_image is snapshots.masked_image
    assert pictures.grid_image is snapshots.grid_image


@pytest.mark.slow
def test_the_engine_and_the_recorded_runs_load_without_matplotlib():
    """Training (with or without --recon_every) and reading a recorded run never import matplotlib
    (about a second): only drawing does."""
    code = ("import sys\n"
            "import mae_from_scratch.pretrain, mae_from_scratch.snapshots, mae_from_scratch.recorded_runs\n"
            "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if m.startswith('matplotlib'))\n"
            "import mae_from_scratch.pictures\n"
            "assert 'matplotlib' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_reconstruct_restores_training_mode(micro_config):
    model, imgs, noise, _ = _setup(micro_config, norm_pix_loss=False)
    model.train()
    reconstruct(model, imgs, noise=noise)
    assert model.training
    model.eval()
    reconstruct(model, imgs, noise=noise)
    assert not model.training


@pytest.mark.parametrize("norm_pix_loss,stats,note", [
    (False, "true", None),
    (True, "true", "true patch stats"),
    (True, "visible", "visible-patch stats"),
])
def test_show_reconstructions_labels_the_statistics(micro_config, norm_pix_loss, stats, note):
    model, imgs, noise, _ = _setup(micro_config, norm_pix_loss=norm_pix_loss)
    fig = show_reconstructions(model, imgs[:2], IMAGENET_MEAN, IMAGENET_STD, noise=noise[:2], stats=stats)
    try:
        assert len(fig.axes) == 2 * 4
        titles = " ".join(ax.get_title() for ax in fig.axes)
        if note is None:
            assert "stats" not in titles
        else:
            assert note in titles
    finally:
        plt.close(fig)


def _architecture_inputs(g=4, p=8, seed=0):
    from mae_from_scratch import random_masking

    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(3, g * p, g * p, generator=gen)
    _, mask, _ = random_masking(torch.zeros(1, g * g, 1), 0.75, torch.rand(1, g * g, generator=gen))
    return img, mask, p


def test_draw_architecture_shows_the_visible_patches_in_token_order():
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    from mae_from_scratch.pictures import draw_architecture, masked_image, to_numpy_image

    img, mask, p = _architecture_inputs()
    fig = draw_architecture(img, mask, p)
    try:
        (ax,) = fig.axes
        images = [im.get_array() for im in ax.images]
        kept = (mask[0] == 0).nonzero().flatten().tolist()
        assert len(kept) == 4 and len(images) == 1 + len(kept) + 1
        assert (images[0] == to_numpy_image(masked_image(img, mask[0], p))).all()
        real = patchify(img[None], p)[0]
        for shown, i in zip(images[1:-1], kept):
            assert (torch.from_numpy(shown.copy()) == real[i].reshape(p, p, 3)).all()
        assert (images[-1] == to_numpy_image(img)).all()
        # The decoder's input: one token per patch, grey exactly where a patch was removed.
        squares = [r for r in ax.patches if isinstance(r, Rectangle)]
        grey = [r for r in squares if to_hex(r.get_facecolor()) == "#c8c8c8"]
        assert len(squares) == len(kept) + 16 and len(grey) == int(mask.sum())
        text = " ".join(t.get_text() for t in ax.texts)
        for word in ("encoder", "decoder", "mask tokens", "4 of 16 patches"):
            assert word in text
    finally:
        plt.close(fig)


def test_draw_architecture_can_show_a_reconstruction():
    from mae_from_scratch.pictures import draw_architecture, to_numpy_image

    img, mask, p = _architecture_inputs(seed=1)
    recon = torch.zeros_like(img)
    fig = draw_architecture(img, mask, p, recon=recon)
    try:
        assert (fig.axes[0].images[-1].get_array() == to_numpy_image(recon)).all()
        assert "reconstruction" in " ".join(t.get_text() for t in fig.axes[0].texts)
    finally:
        plt.close(fig)


def test_draw_architecture_rejects_a_mask_of_the_wrong_size():
    from mae_from_scratch.pictures import draw_architecture

    img, mask, p = _architecture_inputs()
    with pytest.raises(ValueError, match="mask"):
        draw_architecture(img, mask[:, :-1], p)
    with pytest.raises(ValueError, match="divisible"):
        draw_architecture(img, mask, 7)
    with pytest.raises(ValueError, match="every patch"):
        draw_architecture(img, torch.ones(16), p)
