"""Pick the template writer: one place for both doors."""

from __future__ import annotations

from outreach_pipeline.llm.brief import TemplateWriter
from outreach_pipeline.llm.offline_writer import OfflineWriter
from outreach_pipeline.llm.openai_writer import OpenAIWriter
from outreach_pipeline.settings import Settings


def build_writer(backend: str, *, api_key: str = "", base_url: str = "", model: str = "gpt-4o-mini",
                 api_style: str = "chat", max_retries: int = 4) -> TemplateWriter:
    if backend == "openai":
        return OpenAIWriter(api_key, model, base_url or None, max_retries=max_retries, api_style=api_style)
    return OfflineWriter()


def writer_from_settings(settings: Settings) -> TemplateWriter:
    return build_writer("openai" if settings.uses_openai else "offline", api_key=settings.openai_api_key,
                        base_url=settings.openai_base_url, model=settings.openai_model,
                        api_style=settings.openai_api_style.value, max_retries=settings.llm_max_retries)
