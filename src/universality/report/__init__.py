"""The run report: PNG plots and one self-contained `report.html` (see `write_report`), with extra
sections for the analyses that follow the universality step (`group_sections`, `neuron_sections`)."""

from ._group_sections import group_sections
from ._html import ReportSection, write_report
from ._neuron_sections import head_sections, neuron_sections

__all__ = ["write_report", "ReportSection", "group_sections", "neuron_sections", "head_sections"]
