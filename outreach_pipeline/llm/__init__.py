"""Template writers behind one interface: any OpenAI-compatible model, or an offline writer."""

from outreach_pipeline.llm.brief import StepBrief, TemplateDraft, TemplateWriter, WrittenTemplate

__all__ = ["StepBrief", "TemplateDraft", "TemplateWriter", "WrittenTemplate"]
