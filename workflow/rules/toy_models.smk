# The trained models of the toy world: the toy generator, its inpainting fine-tune, the toy unCLIP,
# the toy CLIP and its noised version. Their weights ship in models/, which the default run uses; a
# source or section that names one of the output folders below retrains it (docs/models.md). One rule
# per training recipe, from its declaration (synrep/training_recipes.py): its output folder, the
# toy world's outputs and the files its section names as inputs, a rerun when its section changes.
# NADA's and DreamBooth's rules have other shapes (rules/adaptation.smk).
for recipe in RECIPES.values():
    if not recipe.rule:
        continue
    section = CFG[recipe.section]

    rule:
        name:
            recipe.step
        input:
            **{name: getattr(rules.toyworld.output, name) for name in recipe.world},
            **{key: section[key] for key in recipe.reads},
        output:
            directory(section.output_dir),
        params:
            config=section_hash(CFG, recipe.section, *recipe.hash_with),
        priority: EARLY_PRIORITY
        threads: CFG.threads
        resources:
            runtime=recipe.runtime,
            mem_mb=recipe.mem_mb,
        log:
            LOGS / f"{recipe.step}.log",
        shell:
            synrep(recipe.step)


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
