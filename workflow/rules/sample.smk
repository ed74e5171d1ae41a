# Stage 3: sharded sampling → ADM npz (images) or clips npz (video), class grid (+ GIF/mp4 for video),
# sampling.json (steps, latency, throughput).
# Its arguments: par/workflow/evaluate.py (EvaluateArgs); what several rule files read: par/workflow/preset.py.


rule sample:
    input:
        model=model_file,
        vq=tokenizer,
    output:
        npz=f"{results}/samples/{{run}}/samples.npz",
        meta=f"{results}/samples/{{run}}/sampling.json",
        grid=f"{results}/samples/{{run}}/grid.png",
    wildcard_constraints:
        run=experiment.run_pattern(video=False),
    log:
        f"{results}/logs/sample/{{run}}.log",
    benchmark:
        f"{results}/benchmarks/sample/{{run}}.tsv"
    params:
        out=output_folder,
        args=sample_args,
    threads: experiment.threads("sample", 1)
    resources:
        **experiment.resources("sample"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par sample --model {input.model} --vq {input.vq} --out {params.out} "
        "{params.args} > {log} 2>&1"


# A video run's samples are clips: the same command, which also writes the animated grid (GIF) and an mp4.
use rule sample as sample_video with:
    output:
        npz=f"{results}/samples/{{run}}/samples.npz",
        meta=f"{results}/samples/{{run}}/sampling.json",
        grid=f"{results}/samples/{{run}}/grid.png",
        gif=f"{results}/samples/{{run}}/grid.gif",
        mp4=f"{results}/samples/{{run}}/grid.mp4",
    wildcard_constraints:
        run=experiment.run_pattern(video=True),
