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


def test_straight_through_gradient_flows():
    torch.manual_seed(0)
    lin = BinaryLinear(8, 2)
    lin(torch.randn(5, 8)).pow(2).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    conv = BinaryConv2d(1, 2, 3)
    conv(torch.randn(1, 1, 4, 4)).sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    # The STE passes gradient only where |w| <= 1.
    w = torch.tensor([[0.5, -2.0]], requires_grad=True)
    binarize(w).sum().backward()
    assert w.grad[0, 1] != w.grad[0, 0]


def test_baked_shallow_model_has_no_binary_layers_and_same_outputs():
    torch.manual_seed(0)
    model = build_model("shallow", FASHION).eval()
    baked = bake_binary(model).eval()
    assert not any(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in baked.modules())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for a, b in zip(model(x), baked(x)):
            torch.testing.assert_close(a, b)


def test_stage_shapes_and_size_budget():
    x = torch.randn(2, 1, 28, 28)
    for arch, count in (("deep", 2), ("shallow", 2), ("deep3", 3)):
        model = build_model(arch, FASHION).eval()
        assert len(model.stages) == count
        features, logits = model.stages[0](x)
        # What the device sends over MQTT: at most F x 7 x 7 per sample.
        assert features[0].numel() <= 32 * 7 * 7
        assert model(x)[-1].shape == (2, 10)
        assert isinstance(model.stages[-1](model.stages[-2](features)[0] if count == 3 else features), torch.Tensor)
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
