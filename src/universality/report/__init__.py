"""The run report: PNG plots and one self-contained `report.html` (see `write_report`)."""

from ._html import ReportSection, write_report

__all__ = ["write_report", "ReportSection"]
