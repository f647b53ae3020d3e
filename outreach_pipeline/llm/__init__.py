"""Template writers behind one interface: any OpenAI-compatible model, or an offline writer."""

from outreach_pipeline.llm.brief import (
    InvalidModelOutput,
    OpenerBrief,
    OpenerClient,
    StepBrief,
    TemplateDraft,
    TemplateWriter,
    WrittenOpener,
    WrittenTemplate,
)

__all__ = ["InvalidModelOutput", "OpenerBrief", "OpenerClient", "StepBrief", "TemplateDraft", "TemplateWriter",
           "WrittenOpener", "WrittenTemplate"]
