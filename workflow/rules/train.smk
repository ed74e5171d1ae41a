# Stage 2: one training job per model (size × order × n × ablation). `par train` launches through submitit
# (Slurm: requeue on timeout/preemption, re-attach when re-run) or in-process; it runs on the submit host.


localrules:
    train,


rule train:
    input:
        f"{R}/tokens/manifest.json",
    output:
        f"{R}/models/{{model}}/model.pt",
    params:
        args=train_flags,
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} par train --data {R}/tokens --out {R}/models/{wildcards.model} {params.args}"
