# Stage 3: sharded sampling → ADM npz, class grid, sampling.json (steps, latency, throughput).


rule sample:
    input:
        model=model_file,
        vq=vq_file(),
    output:
        npz=f"{R}/samples/{{model}}/samples.npz",
        meta=f"{R}/samples/{{model}}/sampling.json",
        grid=f"{R}/samples/{{model}}/grid.png",
    params:
        args=sample_flags,
    threads: 1
    resources:
        **res("sample"),
    shell:
        "OMP_NUM_THREADS={threads} par sample --model {input.model} --vq {input.vq} --out {R}/samples/{wildcards.model} {params.args}"
