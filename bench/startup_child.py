"""Run a sertool command and stop it at a milestone, printing the seconds since this process began.

    python bench/startup_child.py first-step train --corpus ... # at the end of the first optimiser step
    python bench/startup_child.py first-forward evaluate RUN ...  # when the model first runs on audio

Benchmark 9 times how long a command takes to get to work; whatever it would do after that (the rest of an
epoch, the rest of a split) is not start-up. The process exits at the milestone without cleaning up.
``first-step`` also prints when the step began (``TRAINING``: the first forward pass in training mode), so
that the step's own work (its micro-batches' forward and backward passes, the optimiser's update) can be
told apart from the start-up before it.
"""
import os
import sys
import time

STARTED = time.perf_counter()  # before anything is imported: the parent adds the interpreter's own start


def _stop(*_args, **_kwargs):
    print(f"MILESTONE {time.perf_counter() - STARTED:.4f}", flush=True)
    os._exit(0)


if __name__ == "__main__":
    milestone, arguments = sys.argv[1], sys.argv[2:]

    if milestone == "first-step":
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def _training_began(module, _args):
            if module.training:
                print(f"TRAINING {time.perf_counter() - STARTED:.4f}", flush=True)
                began.remove()

        began = register_module_forward_pre_hook(_training_began)
        register_optimizer_step_post_hook(_stop)
    elif milestone == "first-forward":
        from torch.nn.modules.module import register_module_forward_pre_hook

        register_module_forward_pre_hook(_stop)
    else:
        raise SystemExit(f"unknown milestone {milestone}")
    from sertool.cli.commands import main

    sys.argv = ["sertool", *arguments]
    main()
