# Stage 1: images → VQ tokenizer → ten-crop token shards (+ the FID reference set).
# Its arguments: par/workflow/data.py (DataArgs); what several rule files read: par/workflow/preset.py.


rule tinyset:
    output:
        f"{results}/images/tinyset.json",
    log:
        f"{results}/logs/tinyset/tinyset.log",
    benchmark:
        f"{results}/benchmarks/tinyset/tinyset.tsv"
    params:
        out=output_folder,
        args=experiment.tinyset_args(),
    resources:
        **experiment.resources("data"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par make-tinyset --out {params.out} {params.args} > {log} 2>&1"


rule reference_tinyset:
    output:
        f"{results}/reference_images/tinyset.json",
    log:
        f"{results}/logs/reference_tinyset/reference_tinyset.log",
    benchmark:
        f"{results}/benchmarks/reference_tinyset/reference_tinyset.tsv"
    params:
        out=output_folder,
        args=experiment.reference_tinyset_args(),
    resources:
        **experiment.resources("data"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par make-tinyset --out {params.out} {params.args} > {log} 2>&1"


rule prepare_images:
    output:
        f"{results}/images/images.json",
    log:
        f"{results}/logs/prepare_images/prepare_images.log",
    benchmark:
        f"{results}/benchmarks/prepare_images/prepare_images.tsv"
    params:
        out=output_folder,
        args=experiment.prepare_images_args(),
    resources:
        **experiment.resources("data"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par prepare-images --out {params.out} {params.args} > {log} 2>&1"


rule reference:
    input:
        heldout=experiment.heldout_marker(),
    output:
        f"{results}/reference.npz",
    log:
        f"{results}/logs/reference/reference.log",
    benchmark:
        f"{results}/benchmarks/reference/reference.tsv"
    params:
        images=experiment.heldout_folder,
        args=experiment.reference_args(),
    resources:
        **experiment.resources("data"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par make-reference --images {params.images} --out {output} {params.args} > {log} 2>&1"


rule floor_images:
    input:
        heldout=experiment.heldout_marker(),
        vq=lambda w: experiment.vq_path() if w.floor == "recon" else [],
    output:
        npz=f"{results}/floors/{{floor}}/samples.npz",
        labels=f"{results}/floors/{{floor}}/labels.npy",
    log:
        f"{results}/logs/floor_images/{{floor}}.log",
    benchmark:
        f"{results}/benchmarks/floor_images/{{floor}}.tsv"
    params:
        images=experiment.heldout_folder,
        vq=lambda w, input: f"--vq {input.vq}" if w.floor == "recon" else "",
        args=lambda w: experiment.floor_args(w.floor),
    wildcard_constraints:
        floor="real|recon",
    resources:
        **experiment.resources("data"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par make-reference --images {params.images} --out {output.npz} --labels {output.labels} {params.vq} "
        "{params.args} > {log} 2>&1"


rule train_vq:
    input:
        unpack(training_images),
        heldout=experiment.heldout_marker(),
    output:
        vq=f"{results}/vq/vq.pt",
        metrics=f"{results}/vq/vq_metrics.json",
    log:
        f"{results}/logs/train_vq/train_vq.log",
    benchmark:
        f"{results}/benchmarks/train_vq/train_vq.tsv"
    params:
        images=experiment.image_folder,
        heldout=experiment.heldout_folder,
        out=output_folder,
        args=experiment.vq_train_args(),
    threads: experiment.threads("tokenizer", 2)
    resources:
        **experiment.resources("tokenizer"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par train-vq --images {params.images} --test-images {params.heldout} "
        "--out {params.out} {params.args} "
        "> {log} 2>&1"


# Threads: Snakemake caps a job's `threads` at the submit host's --cores even when the job runs on a cluster node,
# so inside a Slurm job the CPUs it was given (SLURM_CPUS_PER_TASK, from the stage's `resources.cpus`) set
# OMP_NUM_THREADS; `threads` applies to local runs.
if not experiment.tokenize_slots:

    rule tokenize:
        input:
            unpack(training_images),
            vq=experiment.vq_path(),
        output:
            f"{results}/tokens/manifest.json",
        log:
            f"{results}/logs/tokenize/tokenize.log",
        benchmark:
            f"{results}/benchmarks/tokenize/tokenize.tsv"
        params:
            images=experiment.image_folder,
            out=output_folder,
            args=experiment.tokenize_args(),
        threads: experiment.threads("tokenize", 2)
        resources:
            **experiment.resources("tokenize"),
        conda:
            "../../envs/par.yaml"
        shell:
            "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par tokenize --images {params.images} --vq {input.vq} --out {params.out} "
            "{params.args} > {log} 2>&1"

else:  # `tokenize.array_tasks` jobs side by side, slot i taking shards i, i+k, …; then the manifest

    rule tokenize_slot:
        input:
            unpack(training_images),
            vq=experiment.vq_path(),
        output:
            f"{results}/tokens/slots/{{slot}}.json",
        log:
            f"{results}/logs/tokenize_slot/{{slot}}.log",
        benchmark:
            f"{results}/benchmarks/tokenize_slot/{{slot}}.tsv"
        params:
            images=experiment.image_folder,
            out=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
            args=experiment.tokenize_args(),
            slots=len(experiment.tokenize_slots),
        threads: experiment.threads("tokenize", 2)
        resources:
            **experiment.resources("tokenize"),
        conda:
            "../../envs/par.yaml"
        shell:
            "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par tokenize --images {params.images} --vq {input.vq} --out {params.out} "
            "--shard {wildcards.slot} --num-shards {params.slots} --summary {output} {params.args} > {log} 2>&1"

    rule tokenize:
        input:
            expand(f"{results}/tokens/slots/{{slot}}.json", slot=experiment.tokenize_slots),
        output:
            f"{results}/tokens/manifest.json",
        log:
            f"{results}/logs/tokenize/tokenize.log",
        benchmark:
            f"{results}/benchmarks/tokenize/tokenize.tsv"
        params:
            out=output_folder,
        conda:
            "../../envs/par.yaml"
        shell:
            "exec par tokenize --finalize --out {params.out} > {log} 2>&1"


rule tokenize_heldout:
    input:
        heldout=experiment.heldout_marker(),
        vq=experiment.vq_path(),
    output:
        f"{results}/tokens_heldout/manifest.json",
    log:
        f"{results}/logs/tokenize_heldout/tokenize_heldout.log",
    benchmark:
        f"{results}/benchmarks/tokenize_heldout/tokenize_heldout.tsv"
    params:
        images=experiment.heldout_folder,
        out=output_folder,
        args=experiment.tokenize_args(),
    threads: experiment.threads("tokenize", 2)
    resources:
        **experiment.resources("tokenize"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par tokenize --images {params.images} --vq {input.vq} --out {params.out} "
        "{params.args} > {log} 2>&1"


rule train_classifier:
    input:
        unpack(training_images),
        heldout=experiment.heldout_marker(),
    output:
        weights=f"{results}/classifier/classifier.pt",
        metrics=f"{results}/classifier/metrics.json",
    log:
        f"{results}/logs/train_classifier/train_classifier.log",
    benchmark:
        f"{results}/benchmarks/train_classifier/train_classifier.tsv"
    params:
        images=experiment.image_folder,
        heldout=experiment.heldout_folder,
        out=output_folder,
        args=experiment.classifier_args(),
    threads: experiment.threads("evaluate", 2)
    resources:
        **experiment.resources("evaluate"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par train-classifier --images {params.images} --heldout {params.heldout} "
        "--out {params.out} {params.args} > {log} 2>&1"


rule fetch:
    output:
        f"{results}/downloads/{{file}}",
    log:
        f"{results}/logs/fetch/{{file}}.log",
    benchmark:
        f"{results}/benchmarks/fetch/{{file}}.tsv"
    params:
        args=fetch_args,
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par fetch --out {output} {params.args} > {log} 2>&1"
