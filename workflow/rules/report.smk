# Stage 5: every table (Markdown, CSV, LaTeX) from the result files, then the report people read first. Both read
# the config this run used (<results>/<preset>/workflow-config.yaml, written by common.smk), not config.yaml.
# Its arguments: par/workflow/analysis.py (AnalysisArgs); what several rule files read: par/workflow/preset.py.


rule tables:
    input:
        config=config_file,
        metrics=expand(f"{results}/metrics/{{run}}.json", run=runs),
        sampling=expand(f"{results}/samples/{{run}}/sampling.json", run=runs),
        nll=expand(f"{results}/nll/{{run}}.json", run=experiment.nll_runs),
        floors=expand(f"{results}/floors/{{floor}}.json", floor=experiment.floors),
        video_floors=expand(f"{results}/floors/video-{{floor}}.json", floor=experiment.video_floors),
        classifier=f"{results}/classifier/metrics.json" if experiment.uses_classifier else [],
        entropy=f"{analysis}/entropy/entropy_summary.json" if experiment.has_images else [],
    output:
        expand(f"{analysis}/tables/{{table}}.{{ext}}", table=experiment.tables, ext=["md", "csv", "tex"]),
    log:
        f"{results}/logs/tables/tables.log",
    benchmark:
        f"{results}/benchmarks/tables/tables.tsv"
    params:
        preset=experiment.preset_name,
        results=results_folder,
        out=output_folder,
        extra=lambda w, input: f"--extra-verdicts {input.entropy}" if input.entropy else "",
    resources:
        **experiment.resources("report"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par tables --config {input.config} --preset {params.preset} --results {params.results} "
        "--out {params.out} {params.extra} > {log} 2>&1"


rule report:
    input:
        rules.tables.output,
        rules.entropy_figures.output if experiment.has_images else [],
        expand(f"{results}/samples/{{run}}/grid.png", run=runs),
        expand(f"{results}/samples/{{run}}/grid.gif", run=experiment.video_runs),
        f"{results}/video/vq/video_vq_metrics.json" if experiment.has_video and not experiment.preset.video.tokenizer.checkpoint else [],
        config=config_file,
    output:
        md=f"{analysis}/report.md",
        html=f"{analysis}/report.html",
    log:
        f"{results}/logs/report/report.log",
    benchmark:
        f"{results}/benchmarks/report/report.tsv"
    params:
        preset=experiment.preset_name,
        results=results_folder,
        analysis=output_folder,
    resources:
        **experiment.resources("report"),
    conda:
        "../../envs/par.yaml"
    shell:
        "exec par report --config {input.config} --preset {params.preset} --results {params.results} "
        "--analysis {params.analysis} > {log} 2>&1"
