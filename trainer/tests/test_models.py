import pytest
import torch

from trainer.models import BinaryConv2d, BinaryLinear, bake_binary, binarize, build_model, stage_macs

FASHION = {"input_shape": [1, 28, 28], "filters": 32, "classes": 10}


def test_binarized_forward_is_sign_times_mean_abs():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 5, 5)
    w = conv.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = torch.nn.functional.conv2d(x, torch.where(w >= 0, 1.0, -1.0) * alpha, padding=1)
    torch.testing.assert_close(conv(x), expected)
    lin = BinaryLinear(6, 3)
    xl = torch.randn(4, 6)
    wl = lin.weight.detach()
    expected = xl @ (torch.sign(wl) * wl.abs().mean(dim=1, keepdim=True)).T + lin.bias
    torch.testing.assert_close(lin(xl), expected)
    # Exactly two values per output channel: +alpha and -alpha.
    for row, a in zip(binarize(w), alpha.reshape(-1)):
        assert set(row.abs().reshape(-1).tolist()) == {a.item()}


def test_straight_through_gradient_is_masked_and_includes_alpha():
    # binarize(w) = sign(w) * alpha, alpha = mean |w| of the row. Backward: the STE passes the
    # upstream gradient g through sign() (times alpha) only where |w| <= 1, and alpha adds
    # sum_j(g_j sign(w_j)) * sign(w_i) / n to every weight of the row.
    w = torch.tensor([[0.5, -2.0, 0.25, -1.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    (binarize(w) * g).sum().backward()
    alpha = (0.5 + 2.0 + 0.25 + 1.0) / 4
    sign = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    inside = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # |w| <= 1; -2.0 gets nothing through sign()
    torch.testing.assert_close(w.grad, g * inside * alpha + (g * sign).sum() * sign / 4)


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_binarized_layers_learn(layer):
    """What the shallow device needs from the STE: Adam on the float weights fits a separable task."""
    torch.manual_seed(0)
    x = torch.randn(256, 1, 4, 4)
    y = (x.flatten(1)[:, :8].sum(1) > x.flatten(1)[:, 8:].sum(1)).long()
    if layer == "linear":
        model = torch.nn.Sequential(torch.nn.Flatten(), BinaryLinear(16, 2))
    else:
        model = torch.nn.Sequential(BinaryConv2d(1, 2, 4), torch.nn.Flatten())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_baked_shallow_model_has_no_binary_layers_and_same_outputs():
    torch.manual_seed(0)
    model = build_model("shallow", FASHION).eval()
    baked = bake_binary(model).eval()
    assert not any(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in baked.modules())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(model(x), baked(x)):
            torch.testing.assert_close(a, b)


def test_stages_chain_like_the_tiers_and_fit_the_budgets():
    x = torch.randn(2, 1, 28, 28)
    # What each non-last stage sends to the next tier: F x 7 x 7 from the device (F = 32), and
    # 2F x 3 x 3 from deep3's edge.
    sent = {"deep": [(2, 32, 7, 7)], "shallow": [(2, 32, 7, 7)], "deep3": [(2, 32, 7, 7), (2, 64, 3, 3)]}
    for arch, shapes in sent.items():
        model = build_model(arch, FASHION).eval()
        assert len(model.stages) == len(shapes) + 1
        with torch.no_grad():
            # Stage k reads stage k-1's features, as the tiers run them one after another.
            current, chained, features = x, [], []
            for stage in model.stages[:-1]:
                current, logits = stage(current)
                features.append(tuple(current.shape))
                chained.append(logits)
            chained.append(model.stages[-1](current))
            joint = model(x)
        assert features == shapes, arch
        assert len(joint) == len(chained)
        for a, b in zip(chained, joint):
            assert a.shape == (2, 10)
            torch.testing.assert_close(a, b)
        assert sum(stage_macs(model, [1, 28, 28])) <= 5_000_000


def test_cifar_shape_builds():
    model = build_model("deep3", {"input_shape": [3, 32, 32], "filters": 8, "classes": 10})
    assert model(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


def test_training_is_deterministic():
    import numpy as np

    from trainer.data import Split
    from trainer.train import seed_everything, train_model

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (96, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 96))
    spec = {"scale": 1 / 255, "mean": [0.3], "std": [0.35]}
    states = []
    for _ in range(2):
        seed_everything(5, 1)
        model = build_model("shallow", {**FASHION, "filters": 4})
        train_model(model, split, spec, epochs=2, batch_size=32, lr=1e-3, weight_decay=0.0,
                    exit_weights=[1.0, 0.5], seed=5, use_augment=True, log=lambda _: None)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
