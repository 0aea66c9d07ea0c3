"""Training on several processes, with Hugging Face Accelerate as the engine.

One process (plain `whetstone train`) takes none of this: `Processes.current()` sees no
launcher and every method below is the identity or the plain torch call.

Under a launcher, every process runs the same command. The main process freezes the snapshot,
creates the run, writes the run folder (metrics, checkpoints, `best/`) and registers the
adapter; the others wait for what it decides. Each optimizer step, every process takes a
disjoint share of the same global micro-batch, in the same planned order one process would
use, and DDP averages the gradients; losses are weighted by answer tokens over all processes,
so the step is the one a single process makes on the whole batch (up to float summation
order). Validation is shared the same way and gathered. A checkpoint is therefore the same
whatever the number of processes: a run may resume on more or fewer of them.

Two CPU processes (DDP over gloo), as the tests run it. Accelerate starts several processes
through torchrun only for its multi-GPU launcher; `ACCELERATE_USE_CPU=1` keeps them on the CPU.
On a machine without a GPU the variable is not needed. (`accelerate launch --cpu
--num_processes 2` starts ONE process unless run under mpirun with `--mpirun_hostfile`;
plain `torchrun --nproc-per-node 2 -m whetstone train ...` works too.)

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m whetstone train --task T

On GPUs, describe the machine once with `accelerate config` (multi-GPU, N processes, no
FSDP/DeepSpeed) or pass the flags, and launch the same command; each process takes its own GPU
and trains in bf16 autocast (fp32 weights and optimizer) where the card has bf16:

    accelerate config
    accelerate launch -m whetstone train --task T
    accelerate launch --multi_gpu --num_processes 4 -m whetstone train --task T

Several machines: the usual `--num_machines`, `--machine_rank`, `--main_process_ip` flags.

Whetstone trains with DDP: every process holds the whole model, which is what LoRA, DoRA,
head and top-k training of small models need. An `accelerate config` that picks FSDP or
DeepSpeed is refused with a clear error rather than half-supported: validation generates
with, and checkpoints save, whole weights on one process, which sharded weights would break.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from whetstone.errors import InvalidInput, WhetstoneError

if TYPE_CHECKING:
    import torch

    from whetstone.models.types import CausalLM
    from whetstone.train.data import Batch

T = TypeVar("T")


def launched() -> bool:
    """True when a launcher (accelerate, torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Processes:
    """This process's place among the training processes, and the few collective operations
    the training loop needs. `accelerator` is None for a single process."""

    accelerator: Any = None

    @classmethod
    def current(cls) -> Processes:
        if not launched():
            return cls()
        import torch
        from accelerate import Accelerator

        # Without a GPU, accelerate sets up CPU processes only when told to; say it for it.
        acc = Accelerator(cpu=not torch.cuda.is_available())
        kind = str(acc.distributed_type.value)
        if not kind.startswith("MULTI_"):
            raise InvalidInput(
                f"accelerate set up {kind} for {os.environ['WORLD_SIZE']} processes; whetstone "
                "trains with DDP (multi-CPU or multi-GPU): run `accelerate config` and choose "
                "no FSDP/DeepSpeed"
            )
        return cls(acc)

    @property
    def size(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list[T]) -> list[T]:
        """This process's share of items: every size-th one, starting at its rank."""
        return items[self.rank :: self.size]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run fn on the main process only; every process returns its value. If it fails, the
        others raise too rather than wait for the main process forever."""
        if self.accelerator is None:
            return fn()
        from accelerate.utils import broadcast_object_list

        box: list[Any] = [None, None]  # [value, error]
        if self.is_main:
            try:
                box[0] = fn()
            except Exception as e:
                # Tell the others (an error they can unpickle), then fail here as usual.
                box[1] = (
                    e
                    if isinstance(e, WhetstoneError)
                    else WhetstoneError(
                        f"the main training process failed: {type(e).__name__}: {e}"
                    )
                )
                broadcast_object_list(box)
                raise
        broadcast_object_list(box)
        if box[1] is not None:
            raise box[1]
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of values over all processes."""
        if self.accelerator is None:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return [float(v) for v in self.accelerator.reduce(t, reduction="sum").tolist()]

    def gather(self, items: list[T]) -> list[T]:
        """Every process's items, concatenated in rank order, on every process."""
        if self.accelerator is None:
            return items
        from accelerate.utils import gather_object

        return list(gather_object(items))

    def loss_function(
        self, model: CausalLM, loss: Callable[[CausalLM, Batch], torch.Tensor]
    ) -> Callable[[Batch], torch.Tensor]:
        """`loss(model, batch)` as a function of the batch. Across processes it runs through
        the DDP-wrapped model, whose forward is what lets DDP all-reduce the gradients."""
        if self.accelerator is None:
            return lambda batch: loss(model, batch)
        import torch

        class Loss(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, batch: Batch) -> torch.Tensor:
                return loss(self.model, batch)

        return self.accelerator.prepare(Loss())

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate. DDP averages gradients over processes, so each scales its share by
        the number of processes to keep their sum (every micro-batch is all-reduced; with
        gradient accumulation that is correct, only not the fastest)."""
        if self.accelerator is None:
            loss.backward()
            return
        self.accelerator.backward(loss * self.size)
