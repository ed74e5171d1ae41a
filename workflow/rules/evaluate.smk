# Stage 4: FID / KID / precision-recall / IS with torch-fidelity (offline FID Inception).
# `par evaluate`: par/eval/metrics/command.py; `evaluate` itself in par/eval/metrics/__init__.py.
# Its arguments: par/workflow/evaluate.py (EvaluateArgs); what several rule files read: par/workflow/preset.py.


rule evaluate:
    input:
        samples=f"{results}/samples/{{run}}/samples.npz",
        reference=experiment.evaluation_reference(),
        classifier=f"{results}/classifier/classifier.pt" if experiment.uses_classifier else [],
    output:
        f"{results}/metrics/{{run}}.json",
    log:
        f"{results}/logs/evaluate/{{run}}.log",
    wildcard_constraints:
        run=experiment.run_pattern(video=False),
    benchmark:
        f"{results}/benchmarks/evaluate/{{run}}.tsv"
    params:
        reference=experiment.evaluation_reference_flag(),
        classifier=lambda w, input: f"--classifier-weights {input.classifier}" if input.classifier else "",
        args=experiment.evaluate_args(),
        meta=lambda w: f"run={w.run}",
    threads: experiment.threads("evaluate", 2)
    resources:
        **experiment.resources("evaluate"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par evaluate --samples {input.samples} {params.reference} {input.reference} "
        "{params.classifier} --out {output} {params.args} --meta {params.meta} > {log} 2>&1"


# The floors beside every table, on the same metrics: held-out real images, and the same through the tokenizer.
use rule evaluate as evaluate_floor with:
    input:
        samples=f"{results}/floors/{{floor}}/samples.npz",
        reference=experiment.evaluation_reference(),
        classifier=f"{results}/classifier/classifier.pt" if experiment.uses_classifier else [],
    output:
        f"{results}/floors/{{floor}}.json",
    wildcard_constraints:
        floor="real|recon",
    log:
        f"{results}/logs/evaluate_floor/{{floor}}.log",
    benchmark:
        f"{results}/benchmarks/evaluate_floor/{{floor}}.tsv"
    params:
        reference=experiment.evaluation_reference_flag(),
        classifier=lambda w, input: f"--classifier-weights {input.classifier}" if input.classifier else "",
        args=experiment.evaluate_args(),
        meta=lambda w: f"floor={w.floor}",


# Held-out likelihood: teacher-forced NLL per token on the held-out split's tokens (par/eval/nll.py).
rule nll:
    input:
        model=model_file,
        tokens=heldout_tokens,
    output:
        f"{results}/nll/{{run}}.json",
    log:
        f"{results}/logs/nll/{{run}}.log",
    benchmark:
        f"{results}/benchmarks/nll/{{run}}.tsv"
    params:
        tokens=lambda w, input: os.path.dirname(input.tokens),
        args=experiment.nll_args(),
    threads: experiment.threads("evaluate", 1)
    resources:
        **experiment.resources("evaluate"),
    conda:
        "../../envs/par.yaml"
    shell:
        "OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{threads}}} exec par nll --model {input.model} --tokens {params.tokens} --out {output} "
        "{params.args} > {log} 2>&1"
