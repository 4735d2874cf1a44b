"""Run a sertool command and stop it at a milestone, printing the seconds since this process began.

    python bench/startup_child.py first-step train --corpus ... # at the first optimiser step
    python bench/startup_child.py first-forward evaluate RUN ...  # when the model first runs on audio

Benchmark 9 times how long a command takes to get to work; whatever it would do after that (the rest of an
epoch, the rest of a split) is not start-up. The process exits at the milestone without cleaning up.
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
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_stop)
    elif milestone == "first-forward":
        from torch.nn.modules.module import register_module_forward_pre_hook

        register_module_forward_pre_hook(_stop)
    else:
        raise SystemExit(f"unknown milestone {milestone}")
    from sertool.cli import main

    sys.argv = ["sertool", *arguments]
    main()
