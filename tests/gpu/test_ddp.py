"""A DDP training step on 2 GPUs with Conv3d, both ranks compiling the same new specs at the
same moment into one shared cache. Needs 2 GPUs (device kind nvidia-h200-x2)."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def model(seed: int) -> torch.nn.Module:
    from conv3d_codegen import Conv3d
    torch.manual_seed(seed)
    return torch.nn.Sequential(Conv3d(3, 8, 3, padding=1), torch.nn.ReLU(), Conv3d(8, 4, (1, 3, 5)))


def batch(rank: int) -> torch.Tensor:
    return torch.randn(2, 3, 9, 10, 11, generator=torch.Generator().manual_seed(100 + rank))


def rank_main(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    from conv3d_codegen import strict
    from conv3d_codegen.dispatch import default_dispatcher
    net = torch.nn.parallel.DistributedDataParallel(model(0).cuda(), device_ids=[rank])
    dist.barrier()  # both ranks reach their first forward, and so their builds, together
    with strict():
        loss = net(batch(rank).cuda()).square().mean()
        loss.backward()
    grads = {name: p.grad.double().cpu().tolist() for name, p in net.module.named_parameters()}
    stats = default_dispatcher().cache.stats
    Path(out, f"rank{rank}.json").write_text(json.dumps({"builds": stats.builds, "grads": grads}))
    dist.destroy_process_group()


@pytest.mark.skipif(GPUS < 2, reason=f"DDP needs 2 GPUs; this machine has {GPUS} (device kind nvidia-h200-x2)")
def test_ddp_step_with_both_ranks_compiling_the_same_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("CONV3D_CODEGEN_CACHE", str(tmp_path / "cache"))  # fresh and shared; ranks inherit it
    monkeypatch.setenv("CONV3D_CODEGEN_MODE", "jit")  # build on first use and wait, without tuning:
    monkeypatch.setenv("CONV3D_CODEGEN_AUTOTUNE", "0")  # each rank's first step runs generated kernels
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Each kernel built once between both ranks: two forwards, two wgrads, and the dgrad of the
    # second layer (the first layer's input, the batch, needs no gradient).
    assert sum(r["builds"] for r in ranks) == 5

    reference = model(0).double()  # same weights; DDP averages the two ranks' gradients
    loss = sum(reference(batch(r).double()).square().mean() for r in range(2)) / 2
    loss.backward()
    for name, p in reference.named_parameters():
        for r in ranks:
            ours = torch.tensor(r["grads"][name], dtype=torch.float64)
            assert ((ours - p.grad).norm() / p.grad.norm()).item() <= 1e-5, name
