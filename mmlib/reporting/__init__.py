"""Layer 7: what the chapters show and record.

Modules: ``chapter`` (a chapter's set-up and the numbers it binds to the prose), ``claims`` (the registry of the
paper's claims and the verdicts the chapters record), ``prose`` (the rule and checker that every measured number in
the prose comes from the run), ``plots`` (figures shared by the chapters), and the tables of chapters 00-02:
``world_tables`` (training and zero-shot summaries) and ``map_quality`` (the feature maps compared).

May import every layer below, and ``profiles``.
"""
