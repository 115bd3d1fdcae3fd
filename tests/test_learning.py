import torch

from mae_from_scratch import mae_vit_micro_patch4_32, train_steps
from mae_from_scratch.photos import normalize, photo_crops


def test_masked_loss_falls_by_half_on_real_images():
    imgs = normalize(photo_crops(32, 32, seed=0))
    torch.manual_seed(0)
    model = mae_vit_micro_patch4_32()
    log = train_steps(model, imgs, steps=200, lr=1e-3, seed=0)
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last <= 0.5 * first, (first, last)


def test_train_steps_is_reproducible():
    imgs = normalize(photo_crops(8, 32, seed=3))
    logs = []
    for _ in range(2):
        torch.manual_seed(0)
        logs.append(train_steps(mae_vit_micro_patch4_32(), imgs, steps=3, seed=5))
    assert logs[0] == logs[1]
    assert all({"step", "loss", "loss_visible"} <= set(r) for r in logs[0])
