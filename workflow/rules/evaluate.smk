# Stage 4: FID / KID / precision-recall / IS with torch-fidelity (offline FID Inception).


rule evaluate:
    input:
        samples=f"{results}/samples/{{model}}/samples.npz",
        reference=experiment.evaluation_reference(),
    output:
        f"{results}/metrics/{{model}}.json",
    log:
        f"{results}/logs/evaluate/{{model}}.log",
    benchmark:
        f"{results}/benchmarks/evaluate/{{model}}.tsv"
    params:
        reference=experiment.evaluation_reference_flag(),
        args=experiment.evaluate_args(),
    threads: 2
    resources:
        **experiment.resources("evaluate"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS={threads} exec par evaluate --samples {input.samples} {params.reference} {input.reference} "
        "--out {output} {params.args} --meta model={wildcards.model} > {log} 2>&1"
