import pytest
import torch

from mae_from_scratch import mae_vit_micro_patch4_32, train_steps
from mae_from_scratch.photos import normalize, photo_crops


@pytest.mark.slow
def test_masked_loss_falls_by_half_on_real_images():
    imgs = normalize(photo_crops(32, 32, seed=0))
    torch.manual_seed(0)
    model = mae_vit_micro_patch4_32()
    log = train_steps(model, imgs, steps=200, lr=1e-3, seed=0)
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last <= 0.5 * first, (first, last)


@pytest.mark.slow
def test_train_steps_is_reproducible():
    imgs = normalize(photo_crops(8, 32, seed=3))
    logs = []
    for _ in range(2):
        torch.manual_seed(0)
        logs.append(train_steps(mae_vit_micro_patch4_32(), imgs, steps=3, seed=5))
    assert logs[0] == logs[1]
    assert all({"step", "loss", "loss_visible"} <= set(r) for r in logs[0])


@pytest.mark.slow
def test_train_steps_uses_the_recipes_weight_decay_groups():
    # One AdamW step from the same weights with the same gradients: weight decay
    # (decoupled, p <- p - lr * wd * p) is the only difference between the two runs,
    # so it shows exactly which parameters are decayed.
    imgs = normalize(photo_crops(4, 32, seed=1))
    models = []
    for wd in (0.0, 0.5):
        torch.manual_seed(0)
        models.append(mae_vit_micro_patch4_32())
        train_steps(models[-1], imgs, steps=1, lr=1e-2, weight_decay=wd, seed=0)
    torch.manual_seed(0)
    start = dict(mae_vit_micro_patch4_32().named_parameters())
    plain, decayed = (dict(m.named_parameters()) for m in models)
    for name, p0 in start.items():
        if p0.ndim <= 1 or name.endswith(".bias") or name in ("pos_embed", "decoder_pos_embed"):
            assert torch.equal(plain[name], decayed[name]), f"{name} was decayed"
        else:  # weight matrices and the cls / mask tokens
            torch.testing.assert_close(plain[name] - decayed[name], 1e-2 * 0.5 * p0, rtol=1e-3, atol=1e-7,
                                       msg=f"{name} was not decayed")
