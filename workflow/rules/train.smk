# Stage 2: one training job per model (size × order × n × ablation). `par train` launches through submitit
# (Slurm: requeue on timeout/preemption, re-attach when re-run) or in-process; it runs on the submit host.
# Its arguments: par/workflow/train.py (TrainArgs); what several rule files read: par/workflow/preset.py.


localrules:
    train,


rule train:
    input:
        tokens,
        curve=lambda w: experiment.curve_manifest(w.run),
    output:
        f"{results}/models/{{run}}/model.pt",
    log:
        f"{results}/logs/train/{{run}}.log",
    benchmark:
        f"{results}/benchmarks/train/{{run}}.tsv"
    params:
        tokens=input_folder,
        out=output_folder,
        args=train_args,
        # the learning curve: held-out NLL at every checkpoint (#24), when the preset has held-out tokens
        curve=lambda w: experiment.curve_args(w.run),
    # shown, not used: a resource (unlike a param) is no rerun trigger, and a local rule's resources ask nothing
    resources:
        submitit=train_request,
    message:
        "train {wildcards.run}: par train asks the cluster for {resources.submitit}"
    threads: 1
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS={threads} exec par train --data {params.tokens} --out {params.out} {params.curve} {params.args} "
        "> {log} 2>&1"
