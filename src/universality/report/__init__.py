"""The run report as a static site (see `write_site`): an index with the headline and every universal
unit, one page per unit set and per universal unit; extra sections for the analyses that follow the
universality step (`group_sections`, `neuron_sections`, `head_sections`)."""

from ._group_sections import group_sections
from ._html import ReportSection
from ._algorithm_section import algorithm_sections
from ._calibration_section import calibration_sections
from ._circuits_section import circuit_sections
from ._neuron_sections import head_sections, neuron_sections
from ._posterior_section import posterior_sections
from ._sae_section import sae_sections
from ._similarity_section import similarity_sections
from ._steering_section import steering_sections
from ._training_section import training_sections
from ._site import write_report, write_site

__all__ = ["write_site", "write_report", "ReportSection", "group_sections", "neuron_sections", "head_sections",
           "calibration_sections", "similarity_sections", "posterior_sections", "training_sections", "sae_sections",
           "steering_sections", "circuit_sections", "algorithm_sections"]
