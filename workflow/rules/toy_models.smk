# The toy generator. Its trained weights ship in models/toy_generator, which the default run
# uses; this rule retrains them (docs/models.md, "The toy generator").


rule train_generator:
    input:
        train=rules.toyworld.output.train,
    output:
        directory(CFG.toy_generator.output_dir),
    params:
        config=section_hash(CFG, "toy_generator", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=120,
        mem_mb=4000,
    log:
        LOGS / "train_generator.log",
    shell:
        synrep("train_generator")


# The toy CLIP (open_clip, local-dir format). Its weights ship in models/toy_clip; this rule
# retrains them (docs/models.md, "The toy CLIP").
rule train_clip:
    input:
        train=rules.toyworld.output.train,
        domains=rules.toyworld.output.domains_train,
    output:
        directory(CFG.toy_clip.output_dir),
    params:
        config=section_hash(CFG, "toy_clip", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "train_clip.log",
    shell:
        synrep("train_clip")


# GLIDE's noised CLIP (the toy CLIP's image tower on noised x_t with t). Its weights ship in
# models/toy_noised_clip; this rule retrains them (README: "GLIDE: CLIP guidance").
rule train_noised_clip:
    input:
        train=rules.toyworld.output.train,
        base=CFG.toy_noised_clip.base_clip,
    output:
        directory(CFG.toy_noised_clip.output_dir),
    params:
        config=section_hash(CFG, "toy_noised_clip", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "train_noised_clip.log",
    shell:
        synrep("train_noised_clip")


# The toy inpainting model (GLIDE's fine-tune with mask and masked-image channels). Its weights
# ship in models/toy_inpaint; this rule retrains them (README: "GLIDE: inpainting").
rule train_inpaint:
    input:
        train=rules.toyworld.output.train,
    output:
        directory(CFG.toy_inpaint.output_dir),
    params:
        config=section_hash(CFG, "toy_inpaint", "toyworld"),
    priority: EARLY_PRIORITY
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "train_inpaint.log",
    shell:
        synrep("train_inpaint")


# The CLIPs that score the generator's samples: the guiding one when it exists (models/toy_clip),
# and a held-out one (sample_quality.heldout_clip), which the rule below trains when it lives in results/.
SCORING_CLIPS = [c for c in (CFG.generation.clip_model, CFG.sample_quality.heldout_clip)
                 if c and (Path(c, "open_clip_config.json").exists() or c.startswith(str(CFG.paths.results_dir)))]

if CFG.sample_quality.heldout_clip and CFG.sample_quality.heldout_clip.startswith(str(CFG.paths.results_dir)):

    rule train_heldout_clip:
        input:
            train=rules.toyworld.output.train,
            domains=rules.toyworld.output.domains_train,
        output:
            directory(CFG.sample_quality.heldout_clip),
        params:
            config=section_hash(CFG, "toy_clip", "toyworld"),
            seed=CFG.sample_quality.heldout_clip_seed,
        priority: EARLY_PRIORITY
        threads: CFG.threads
        resources:
            runtime=60,
            mem_mb=4000,
        log:
            LOGS / "train_heldout_clip.log",
        shell:
            synrep("train_clip", "toy_clip.output_dir={output} toy_clip.seed={params.seed}")


rule sample_quality:
    input:
        local_model_dir(CFG.generation.model),
        SCORING_CLIPS,
        [CFG.sample_quality.noised_clip] if CFG.sample_quality.noised_clip_scales else [],
        # the shipped judge, when there is one (a retrained one reruns the rule)
        [q for q in [CFG.sample_quality.classifier] if q and Path(q).exists()],
        train=rules.toyworld.output.train,
        test=rules.toyworld.output.test,
    output:
        table=RESULTS / "sample_quality" / "caption_match.csv",
        plot=RESULTS / "sample_quality" / "caption_match.png",
    params:
        config=section_hash(CFG, "sample_quality", "generation", "toyworld"),
    priority: EARLY_PRIORITY
    threads: GENERATION_THREADS
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "sample_quality.log",
    shell:
        synrep("sample_quality")


# GLIDE's inpainting edits, judged (evaluation/inpaint_quality.py): in the default target when
# inpaint_quality.enabled.
rule inpaint_quality:
    input:
        [local_model_dir(m) for m in CFG.inpaint_quality.models],
        [q for q in [CFG.sample_quality.classifier] if q and Path(q).exists()],
        train=rules.toyworld.output.train,
        test=rules.toyworld.output.test,
    output:
        table=RESULTS / "inpaint_quality" / "inpaint_edits.md",
        runs=RESULTS / "inpaint_quality" / "inpaint_runs.csv",
    params:
        config=section_hash(CFG, "inpaint_quality", "generation", "toyworld"),
    priority: EARLY_PRIORITY
    threads: GENERATION_THREADS
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "inpaint_quality.log",
    shell:
        synrep("inpaint_quality")
