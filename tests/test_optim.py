"""The optimisers of ``optim.name``: Muon for the hidden convolutions with Adam for the rest, and plain Adam."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fastnst.model_file import load_model
from fastnst.net import TransformerNet
from fastnst.training.optim import MuonAdam, build_optimizer, hidden_convolutions, orthogonalise
from fastnst.training.pipeline import ConfigError, validate
from conftest import run_module, tiny_train_args
from test_configs import compose_plain


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalise_keeps_the_shape_and_pushes_singular_values_to_about_one(shape: tuple[int, int]) -> None:
    # Columns scaled over a decade: singular values spread by a factor of 4 to 180.
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 0, shape[1])
    assert torch.linalg.cond(g) > 3
    o = orthogonalise(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    s = torch.linalg.svdvals(o.double())
    assert 0.55 < s.min() and s.max() < 1.3, s
    # Same singular vectors: the direction of g is kept (positive alignment), only its spectrum flattens.
    assert (o * g).sum() > 0


def test_orthogonalise_treats_a_batch_as_separate_matrices() -> None:
    gen = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 16, 72, generator=gen) * torch.tensor([1.0, 1e-3, 50.0])[:, None, None]
    together = orthogonalise(batch)
    for g, o in zip(batch, together):
        torch.testing.assert_close(o, orthogonalise(g), rtol=0, atol=0.02)  # bf16 arithmetic; each matrix scaled alone


def test_adam_groups_step_exactly_as_torch_adam() -> None:
    torch.manual_seed(0)
    ours, ref = TransformerNet(8, 1), TransformerNet(8, 1)
    ref.load_state_dict(ours.state_dict())
    opt_ours = MuonAdam([{"params": list(ours.parameters())}], lr=4e-3, betas=(0.8, 0.99))
    opt_ref = torch.optim.Adam(ref.parameters(), lr=4e-3, betas=(0.8, 0.99))
    x = torch.rand(2, 3, 24, 24)
    for _ in range(4):
        for net, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert opt_ours.state_dict()["state"].keys() == opt_ref.state_dict()["state"].keys()


def test_build_optimizer_puts_each_parameter_in_one_group_and_only_hidden_convolutions_on_muon() -> None:
    net = TransformerNet(8, 2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    hidden = hidden_convolutions(net)
    assert hidden == convs[1:-1] and net.encoder[0][0] not in hidden and net.decoder[-1] not in hidden
    for scale, n_groups in ((1.0, 2), (5.0, 3)):
        opt = build_optimizer(net, "muon", 2e-3, (0.9, 0.999), norm_lr_scale=scale)
        assert isinstance(opt, MuonAdam) and len(opt.param_groups) == n_groups
        ids = [id(p) for g in opt.param_groups for p in g["params"]]
        assert sorted(ids) == sorted(id(p) for p in net.parameters())  # every parameter, once
        muon = [g for g in opt.param_groups if g["muon"]]
        assert len(muon) == 1 and {id(p) for p in muon[0]["params"]} == {id(m.weight) for m in hidden}
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3] * (n_groups - 1) + [2e-3 * scale])
    assert type(build_optimizer(net, "adam", 1e-3, (0.9, 0.999))) is torch.optim.Adam
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; available: adam, muon"):
        build_optimizer(net, "sgd", 1e-3, (0.9, 0.999))
    with pytest.raises(ValueError, match="2-D or more"):
        MuonAdam([{"params": [net.encoder[1][1].weight], "muon": True}])


def test_a_muon_step_moves_each_hidden_kernel_by_an_rms_of_a_fifth_of_lr() -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 1)
    opt = build_optimizer(net, "muon", 1e-2, (0.9, 0.999))
    before = copy.deepcopy(net.state_dict())
    net(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()
    for name, p in net.named_parameters():
        if any(p is m.weight for m in hidden_convolutions(net)):
            rms = (p - before[name]).square().mean().sqrt().item()
            assert rms == pytest.approx(0.2 * 1e-2, rel=0.3), name


def test_muon_lowers_a_loss_and_its_state_round_trips_for_resuming() -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 1)
    x, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    opt = build_optimizer(net, "muon", 3e-3, (0.9, 0.999))

    def step(n: nn.Module, o: torch.optim.Optimizer) -> float:
        o.zero_grad()
        loss = (n(x) - target).square().mean()
        loss.backward()
        o.step()
        return loss.item()

    losses = [step(net, opt) for _ in range(30)]
    assert losses[-1] < 0.8 * losses[0]
    # A resumed run (Lightning checkpoints hold the optimiser's state_dict) continues exactly where it stopped.
    twin = copy.deepcopy(net)
    twin_opt = build_optimizer(twin, "muon", 3e-3, (0.9, 0.999))
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(3):
        step(net, opt), step(twin, twin_opt)
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_optim_name_is_checked_with_a_one_line_error() -> None:
    cfg = compose_plain("optim.name=sgd")
    with pytest.raises(ConfigError, match="optim.name='sgd'; allowed: adam, muon"):
        validate(cfg)


def test_training_with_muon_writes_a_model(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_module("fastnst.train", *tiny_train_args(run_dir, photo_dir, style_file, steps=3), "optim.name=muon", "optim.warmup_steps=2")
    assert result.returncode == 0, result.stderr[-2000:]
    _, meta = load_model(run_dir / "starry.pt")
    assert meta["optim"]["name"] == "muon" and meta["steps"] == 3  # the recipe is recorded with the model
