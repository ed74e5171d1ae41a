# Stage 3: sharded sampling → ADM npz, class grid, sampling.json (steps, latency, throughput).


rule sample:
    input:
        model=model_file,
        vq=experiment.vq_path(),
    output:
        npz=f"{results}/samples/{{run}}/samples.npz",
        meta=f"{results}/samples/{{run}}/sampling.json",
        grid=f"{results}/samples/{{run}}/grid.png",
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
        "OMP_NUM_THREADS={threads} exec par sample --model {input.model} --vq {input.vq} --out {params.out} "
        "{params.args} > {log} 2>&1"
