"""The command prefix that starts two CPU processes through accelerate (shared by the multi-process tests).

accelerate 1.x starts several CPU processes with --cpu only through mpirun; --multi_gpu starts them through torchrun,
and the command's --device cpu makes each a gloo (MULTI_CPU) process.
"""

import sys

TWO_CPU_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
