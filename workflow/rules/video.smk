# The video half (Table 4): clips → video tokenizer → token shards, then the FVD reference, the floors and the
# FVD of every video run. Training, sampling and NLL are the image rules (train.smk, sample.smk, evaluate.smk):
# a `modality: video` model reads the video tokens and tokenizer instead. Everything lives under <results>/video/.
# Its arguments: par/workflow/video.py (VideoArgs); what several rule files read: par/workflow/preset.py.


if not experiment.video_slots:

    rule prepare_video:
        output:
            f"{results}/video/clips/{{split}}/manifest.json",
        log:
            f"{results}/logs/prepare_video/{{split}}.log",
        benchmark:
            f"{results}/benchmarks/prepare_video/{{split}}.tsv"
        params:
            out=output_folder,
            args=lambda w: experiment.prepare_video_args(w.split),
        wildcard_constraints:
            split="train|test",
        resources:
            **experiment.resources("video_data"),
        conda:
            "../../envs/par.yaml"
        shell:
            "exec par prepare-video --out {params.out} {params.args} > {log} 2>&1"

    rule tokenize_video:
        input:
            clips=lambda w: f"{results}/video/clips/{'test' if w.part == 'tokens_heldout' else 'train'}/manifest.json",
            vq=experiment.video_vq_path(),
        output:
            f"{results}/video/{{part}}/manifest.json",
        log:
            f"{results}/logs/tokenize_video/{{part}}.log",
        benchmark:
            f"{results}/benchmarks/tokenize_video/{{part}}.tsv"
        params:
            clips=lambda w, input: os.path.dirname(input.clips),
            out=output_folder,
            args=experiment.video_tokenize_args(),
        wildcard_constraints:
            part="tokens|tokens_heldout",
        threads: experiment.threads("video_tokenize", 2)
        resources:
            **experiment.resources("video_tokenize"),
        conda:
            "../../envs/par.yaml"
        shell:
            "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par tokenize-video --clips {params.clips} --vq {input.vq} "
            "--out {params.out} {params.args} > {log} 2>&1"

else:  # `video.array_tasks` jobs side by side (slot i takes shards i, i+k, …), then the manifest

    rule prepare_video_slot:
        output:
            f"{results}/video/clips/{{split}}/slots/{{slot}}.json",
        log:
            f"{results}/logs/prepare_video_slot/{{split}}-{{slot}}.log",
        benchmark:
            f"{results}/benchmarks/prepare_video_slot/{{split}}-{{slot}}.tsv"
        params:
            out=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
            args=lambda w: experiment.prepare_video_args(w.split),
            slots=len(experiment.video_slots),
        wildcard_constraints:
            split="train|test",
        resources:
            **experiment.resources("video_data"),
        conda:
            "../../envs/par.yaml"
        shell:
            "exec par prepare-video --out {params.out} --shard {wildcards.slot} --num-shards {params.slots} "
            "--summary {output} {params.args} > {log} 2>&1"

    rule prepare_video:
        input:
            expand(f"{results}/video/clips/{{{{split}}}}/slots/{{slot}}.json", slot=experiment.video_slots),
        output:
            f"{results}/video/clips/{{split}}/manifest.json",
        log:
            f"{results}/logs/prepare_video/{{split}}.log",
        params:
            out=output_folder,
            args=lambda w: experiment.prepare_video_args(w.split),
        wildcard_constraints:
            split="train|test",
        conda:
            "../../envs/par.yaml"
        shell:
            "exec par prepare-video --finalize --out {params.out} {params.args} > {log} 2>&1"

    rule tokenize_video_slot:
        input:
            clips=lambda w: f"{results}/video/clips/{'test' if w.part == 'tokens_heldout' else 'train'}/manifest.json",
            vq=experiment.video_vq_path(),
        output:
            f"{results}/video/{{part}}/slots/{{slot}}.json",
        log:
            f"{results}/logs/tokenize_video_slot/{{part}}-{{slot}}.log",
        benchmark:
            f"{results}/benchmarks/tokenize_video_slot/{{part}}-{{slot}}.tsv"
        params:
            clips=lambda w, input: os.path.dirname(input.clips),
            out=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
            args=experiment.video_tokenize_args(),
            slots=len(experiment.video_slots),
        wildcard_constraints:
            part="tokens|tokens_heldout",
        threads: experiment.threads("video_tokenize", 2)
        resources:
            **experiment.resources("video_tokenize"),
        conda:
            "../../envs/par.yaml"
        shell:
            "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par tokenize-video --clips {params.clips} --vq {input.vq} "
            "--out {params.out} --shard {wildcards.slot} --num-shards {params.slots} --summary {output} "
            "{params.args} > {log} 2>&1"

    rule tokenize_video:
        input:
            expand(f"{results}/video/{{{{part}}}}/slots/{{slot}}.json", slot=experiment.video_slots),
        output:
            f"{results}/video/{{part}}/manifest.json",
        log:
            f"{results}/logs/tokenize_video/{{part}}.log",
        params:
            out=output_folder,
        wildcard_constraints:
            part="tokens|tokens_heldout",
        conda:
            "../../envs/par.yaml"
        shell:
            "exec par tokenize-video --finalize --out {params.out} > {log} 2>&1"


rule train_video_vq:
    input:
        clips=f"{results}/video/clips/train/manifest.json",
        test=f"{results}/video/clips/test/manifest.json",
    output:
        vq=f"{results}/video/vq/video_vq.pt",
        metrics=f"{results}/video/vq/video_vq_metrics.json",
    log:
        f"{results}/logs/train_video_vq/train_video_vq.log",
    benchmark:
        f"{results}/benchmarks/train_video_vq/train_video_vq.tsv"
    params:
        clips=lambda w, input: os.path.dirname(input.clips),
        test=lambda w, input: os.path.dirname(input.test),
        out=output_folder,
        args=experiment.video_vq_train_args(),
    priority: 10  # the head of the critical path (tokens, then every training run): before the FVD reference
    threads: experiment.threads("video_tokenizer")  # resources.video_tokenizer.cpus: tiny's 1 leaves a core free
    resources:
        **experiment.resources("video_tokenizer"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par train-video-vq --clips {params.clips} --test-clips {params.test} "
        "--out {params.out} {params.args} > {log} 2>&1"


# The FVD reference: I3D statistics of a fixed draw of train clips (MAGVIT's protocol compares with the train
# split), computed once and shared by every run and floor.
rule fvd_reference:
    input:
        f"{results}/video/clips/train/manifest.json",
    output:
        f"{results}/video/fvd_reference.npz",
    log:
        f"{results}/logs/fvd_reference/fvd_reference.log",
    benchmark:
        f"{results}/benchmarks/fvd_reference/fvd_reference.tsv"
    params:
        clips=input_folder,
        args=experiment.fvd_stats_args(),
    threads: experiment.threads("fvd", 2)
    resources:
        **experiment.resources("fvd"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par fvd-stats --clips {params.clips} --out {output} {params.args} "
        "> {log} 2>&1"


# Table 4's floors: held-out real clips, and the same clips through the video tokenizer (its rFVD).
rule video_floor:
    input:
        clips=f"{results}/video/clips/test/manifest.json",
        vq=lambda w: experiment.video_vq_path() if w.floor == "recon" else [],
    output:
        f"{results}/video/floors/{{floor}}/samples.npz",
    log:
        f"{results}/logs/video_floor/{{floor}}.log",
    benchmark:
        f"{results}/benchmarks/video_floor/{{floor}}.tsv"
    params:
        clips=lambda w, input: os.path.dirname(input.clips),
        vq=lambda w, input: f"--tokenizer {input.vq}" if w.floor == "recon" else "",
        args=experiment.video_floor_args(),
    wildcard_constraints:
        floor="real|recon",
    threads: experiment.threads("fvd", 2)
    resources:
        **experiment.resources("fvd"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par make-video-floor --clips {params.clips} {params.vq} --out {output} "
        "{params.args} > {log} 2>&1"


rule fvd:
    input:
        samples=f"{results}/samples/{{run}}/samples.npz",
        reference=f"{results}/video/fvd_reference.npz",
    output:
        f"{results}/metrics/{{run}}.json",
    log:
        f"{results}/logs/fvd/{{run}}.log",
    benchmark:
        f"{results}/benchmarks/fvd/{{run}}.tsv"
    wildcard_constraints:
        run=experiment.run_pattern(video=True),
    params:
        args=experiment.fvd_args(),
        meta=lambda w: f"run={w.run}",
    threads: experiment.threads("fvd", 2)
    resources:
        **experiment.resources("fvd"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par fvd --generated {input.samples} --reference {input.reference} "
        "--out {output} {params.args} --meta {params.meta} > {log} 2>&1"


use rule fvd as fvd_floor with:
    input:
        samples=f"{results}/video/floors/{{floor}}/samples.npz",
        reference=f"{results}/video/fvd_reference.npz",
    output:
        f"{results}/floors/video-{{floor}}.json",
    log:
        f"{results}/logs/fvd_floor/{{floor}}.log",
    benchmark:
        f"{results}/benchmarks/fvd_floor/{{floor}}.tsv"
    wildcard_constraints:
        floor="real|recon",
    params:
        args=experiment.fvd_args(),
        meta=lambda w: f"floor=video-{w.floor}",
