"""Published numbers that a reproduction can be set beside, each with the source it was
copied from (``kuda-mmsa reproduce`` writes them next to ours)."""

from typing import Dict, Optional, Tuple

from ..mmsa.datasets import canonical_name

SOURCES = {
    "MMSA": "thuiar/MMSA, results/result-stat.md (\"Baseline results\", linked from MMSA's README section 4 "
            "'Results'), Regression tables, unaligned data settings; https://github.com/thuiar/MMSA/blob/master/"
            "results/result-stat.md. Published in percent (MAE x 100 too); shown here divided by 100.",
}


# The rows of that file's Regression tables for the peers run here, copied as published.
_MMSA_REGRESSION = {
    "mosi": ("Has0_acc_2 Has0_F1_score Non0_acc_2 Non0_F1_score Mult_acc_5 Mult_acc_7 MAE Corr", """
        lf_dnn |77.52 |77.58 |78.63 |78.63 |38.05 |34.52 |95.48 |65.84
        tfn |77.99 |78.03 |79.08 |79.06 |39.39 |34.46 |94.73 |67.33
        lmf |77.9 |78.0 |79.18 |79.2 |38.13 |33.82 |95.04 |65.1
        mult |79.71 |79.79 |80.98 |81.0 |42.68 |36.91 |87.99 |70.22
        misa |81.84 |81.85 |83.54 |83.49 |47.08 |41.37 |77.65 |77.81
        self_mm |83.0 |83.05 |84.82 |84.81 |52.66 |46.07 |72.44 |78.92"""),
    "mosei": ("Has0_acc_2 Has0_F1_score Non0_acc_2 Non0_F1_score Mult_acc_5 Mult_acc_7 MAE Corr", """
        lf_dnn |80.6 |80.35 |82.74 |82.95 |51.97 |50.83 |58.02 |70.87
        tfn |78.5 |78.05 |81.89 |82.04 |53.1 |51.6 |57.26 |71.41
        lmf |80.54 |80.14 |83.48 |83.6 |52.99 |51.59 |57.57 |71.69
        mult |81.15 |80.73 |84.63 |84.73 |54.18 |52.84 |55.93 |73.31
        misa |80.67 |80.12 |84.67 |84.68 |53.63 |52.05 |55.75 |75.15
        self_mm |81.94 |81.62 |84.88 |85.02 |56.06 |54.4 |53.46 |75.87"""),
    "sims": ("Mult_acc_2 Mult_acc_3 Mult_acc_5 F1_score MAE Corr", """
        lf_dnn |77.02 |64.33 |39.74 |77.27 |44.63 |55.51
        tfn |78.38 |65.12 |39.3 |78.62 |43.22 |59.1
        lmf |77.77 |64.68 |40.53 |77.88 |44.12 |57.59
        mult |78.56 |64.77 |37.94 |79.66 |45.32 |56.41
        self_mm |80.04 |65.47 |41.53 |80.44 |42.50 |59.52"""),
}


def _published_table() -> Dict[Tuple[str, str, str], Tuple[float, str]]:
    out = {}
    for dataset, (header, body) in _MMSA_REGRESSION.items():
        metrics = header.split()
        for line in body.strip().splitlines():
            cells = [c.strip() for c in line.split("|")]
            for metric, value in zip(metrics, cells[1:]):
                out[(dataset, cells[0], metric)] = (float(value) / 100.0, "MMSA")
    return out


PUBLISHED = _published_table()


def published(dataset: str, variant: str, metric: str) -> Optional[Tuple[float, str]]:
    return PUBLISHED.get((canonical_name(dataset), variant, metric))
