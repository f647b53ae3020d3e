"""Templates: checked before they are saved, written by a TemplateWriter (with A/B variants), edited by people."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.core.campaigns import MAX_ROW_ID, placeholder_problems
from outreach_pipeline.core.errors import InvalidInputError, NotFoundError
from outreach_pipeline.core.lead_fields import lead_fields
from outreach_pipeline.core.llm_cache import CacheWrite, cache_key, cached_answers, remember
from outreach_pipeline.core.placeholders import AI_OPENER, find_placeholders, template_text, unbalanced_braces
from outreach_pipeline.core.template_lint import template_warnings
from outreach_pipeline.db.models import Campaign, CampaignStatus, Lead, LeadStatus, Template
from outreach_pipeline.llm.brief import InvalidModelOutput, StepBrief, TemplateDraft, TemplateWriter, WrittenTemplate
from outreach_pipeline.llm.prompts import PROMPT_VERSION, Messages, rewrite_messages, write_messages

MAX_SUBJECT = 200
MAX_BODY = 10_000
MAX_VARIANTS = 5
VARIANTS = string.ascii_uppercase[:MAX_VARIANTS]


class TemplateInput(BaseModel):
    step_number: int = Field(ge=1, le=10)
    variant: str = Field("A", pattern=r"^[A-Z]$")
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT)
    body: str = Field(min_length=1, max_length=MAX_BODY)
    html_body: str | None = Field(None, max_length=2 * MAX_BODY)


class TemplateEdit(BaseModel):
    subject: str | None = Field(None, min_length=1, max_length=MAX_SUBJECT)
    body: str | None = Field(None, min_length=1, max_length=MAX_BODY)
    html_body: str | None = Field(None, max_length=2 * MAX_BODY)


@dataclass
class GenerationReport:
    templates: list[Template] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_requests: int = 0  # requests the writer made (the SDK's own retries not counted)
    cache_hits: int = 0


# --- checking --------------------------------------------------------------------------------


def template_problems(subject: str, body: str, fields: list[str], html_body: str | None = None) -> list[str]:
    """Why a template cannot be saved (empty means it can). `{{ai_opener}}` is always allowed."""
    problems: list[str] = []
    if not subject.strip():
        problems.append("The subject is empty.")
    if len(subject) > MAX_SUBJECT:
        problems.append(f"The subject is longer than {MAX_SUBJECT} characters.")
    if not body.strip():
        problems.append("The body is empty.")
    if len(body) > MAX_BODY:
        problems.append(f"The body is longer than {MAX_BODY} characters.")
    parts = [("subject", subject), ("body", body)] + ([("HTML body", html_body)] if html_body else [])
    for part, text in parts:
        if unbalanced_braces(text):
            problems.append(f"The {part} has unbalanced placeholder braces.")
        for placeholder in find_placeholders(text):
            if placeholder.fallback is None and placeholder.name not in fields and placeholder.name != AI_OPENER:
                problems.append(
                    f"Unknown field {{{{{placeholder.name}}}}} in the {part}; known fields: {', '.join(fields)}. "
                    f"Use a fallback like {{{{{placeholder.name}|...}}}} if some leads lack it."
                )
    if html_body and "<script" in html_body.lower():
        problems.append("The HTML body contains a script.")
    return problems


def check_template(session: Session, campaign: Campaign, subject: str, body: str, html_body: str | None = None,
                   step_number: int | None = None) -> None:
    """Refuse a template that cannot be saved; on a campaign past DRAFT (given the step), also one that a lead
    still to receive the step could not fill: launch checked the leads against the templates it saw."""
    fields = lead_fields(session, campaign)
    problems = template_problems(subject, body, fields, html_body)
    if problems:
        raise InvalidInputError("The template is not valid.", details=problems)
    if step_number is not None and campaign.status != CampaignStatus.DRAFT:
        problems = placeholder_problems(session, campaign, step_number, template_text(subject, body, html_body),
                                        fields)
        if problems:
            raise InvalidInputError("Some leads still to receive this template lack a field it uses.",
                                    details=problems)


def _require_step(campaign: Campaign, step_number: int) -> None:
    if step_number not in {s.number for s in campaign.steps}:
        raise InvalidInputError(f"The campaign has no step {step_number}.")


# --- reading and saving ----------------------------------------------------------------------


def list_templates(session: Session, campaign: Campaign) -> list[Template]:
    return list(session.scalars(
        select(Template).where(Template.campaign_id == campaign.id).order_by(Template.step_number, Template.variant)
    ))


def get_template(session: Session, campaign: Campaign, template_id: int) -> Template:
    template = session.get(Template, template_id) if 0 < template_id <= MAX_ROW_ID else None
    if template is None or template.campaign_id != campaign.id:
        raise NotFoundError(f"Template {template_id} not found.")
    return template


def save_template(session: Session, campaign: Campaign, data: TemplateInput, written: WrittenTemplate | None = None) -> Template:
    """Create or replace the template of a step and variant after checking it; lint warnings are kept on it."""
    _require_step(campaign, data.step_number)
    check_template(session, campaign, data.subject, data.body, data.html_body, data.step_number)
    template = session.scalar(select(Template).where(
        Template.campaign_id == campaign.id, Template.step_number == data.step_number, Template.variant == data.variant
    ))
    if template is None:
        template = Template(campaign_id=campaign.id, step_number=data.step_number, variant=data.variant)
        session.add(template)
    template.subject, template.body, template.html_body = data.subject, data.body, data.html_body
    template.warnings = template_warnings(data.subject, data.body)
    template.source = written.source if written else "manual"
    template.model = written.model if written else None
    template.prompt_version = PROMPT_VERSION if written and written.model else None
    template.prompt_tokens = written.prompt_tokens if written else 0
    template.completion_tokens = written.completion_tokens if written else 0
    session.flush()
    return template


def edit_template(session: Session, campaign: Campaign, template: Template, data: TemplateEdit) -> Template:
    subject = data.subject if data.subject is not None else template.subject
    body = data.body if data.body is not None else template.body
    html_body = data.html_body if "html_body" in data.model_fields_set else template.html_body
    check_template(session, campaign, subject, body, html_body, template.step_number)
    template.subject, template.body, template.html_body, template.source = subject, body, html_body, "manual"
    template.warnings = template_warnings(subject, body)
    session.flush()
    return template


# --- A/B variants on the send path -----------------------------------------------------------


def choose_variant(templates: Sequence[Template], lead_id: int) -> Template:
    """The variant of one step a lead gets: deterministic, and an even split over consecutive lead ids.

    `templates` are the step's variants (any order). The same lead keeps the same variant letter index
    at every step, so a reply can be credited to one variant.
    """
    if not templates:
        raise ValueError("no template to choose from")
    ordered = sorted(templates, key=lambda t: t.variant)
    return ordered[lead_id % len(ordered)]


# --- writing with a model --------------------------------------------------------------------


def sample_lead(session: Session, campaign: Campaign) -> dict[str, str] | None:
    """One waiting lead's values (no address), so the model sees what the placeholders will hold."""
    lead = session.scalar(select(Lead).where(Lead.campaign_id == campaign.id, Lead.status == LeadStatus.PENDING)
                          .order_by(Lead.id).limit(1))
    if lead is None:
        return None
    values = {"first_name": lead.first_name, "last_name": lead.last_name, "company": lead.company, "title": lead.title,
              **{str(k): v for k, v in (lead.custom_fields or {}).items()}}
    return {k: str(v) for k, v in values.items() if v not in (None, "")}


def step_brief(
    session: Session, campaign: Campaign, step_number: int, variant: str = "A", use_ai_opener: bool = False
) -> StepBrief:
    templates = list_templates(session, campaign)
    # Follow-ups must not repeat what this lead already read: the same variant letter, else A.
    earlier: list[TemplateDraft] = []
    for number in sorted({t.step_number for t in templates if t.step_number < step_number}):
        of_step = {t.variant: t for t in templates if t.step_number == number}
        chosen = of_step.get(variant) or of_step.get("A")
        if chosen is not None:
            earlier.append(TemplateDraft(subject=chosen.subject, body=chosen.body))
    others = [TemplateDraft(subject=t.subject, body=t.body)
              for t in templates if t.step_number == step_number and t.variant != variant]
    return StepBrief(
        campaign_name=campaign.name,
        pitch=campaign.pitch,
        tone=campaign.tone,
        sender_name=campaign.sender_name,
        step_number=step_number,
        total_steps=len(campaign.steps),
        available_fields=lead_fields(session, campaign),
        previous_steps=earlier,
        variant=variant,
        other_variants=others,
        sample_lead=sample_lead(session, campaign),
        use_ai_opener=use_ai_opener,
    )


@dataclass(frozen=True)
class _Ask:
    """One request to the writer: how to make it, and the messages it sends (which key the cache)."""

    call: Callable[[str | None], WrittenTemplate]
    messages: Callable[[str | None], Messages]


def _answer(session: Session, writer: TemplateWriter, ask: _Ask, feedback: str | None, report: GenerationReport,
            use_cache: bool) -> tuple[WrittenTemplate | None, list[str], str | None]:
    """One attempt: from the cache or the writer. Returns (answer, problems reading it, cache key)."""
    key = cache_key("template", writer.model, ask.messages(feedback)) if writer.model else None
    if key and use_cache:
        hit = cached_answers(session, [key]).get(key)
        if hit is not None:
            report.cache_hits += 1
            return WrittenTemplate(TemplateDraft.model_validate(hit), writer.name, writer.model, cached=True), [], key
    report.model_requests += 1
    try:
        return ask.call(feedback), [], key
    except InvalidModelOutput as error:
        return None, [f"The answer could not be read: {error}"], key


def _write_checked(session: Session, writer: TemplateWriter, fields: list[str], ask: _Ask,
                   report: GenerationReport, use_cache: bool = True) -> WrittenTemplate:
    """Ask; on an invalid answer ask once more with the reasons fed back; never return a broken template."""
    feedback: str | None = None
    prompt_tokens = completion_tokens = 0
    problems: list[str] = []
    for _attempt in range(2):
        written, problems, key = _answer(session, writer, ask, feedback, report, use_cache)
        if written is not None:
            prompt_tokens += written.prompt_tokens
            completion_tokens += written.completion_tokens
            draft = written.draft
            problems = template_problems(draft.subject, draft.body, fields, draft.html)
        if written is not None and not problems:
            if key and not written.cached:
                # Cached under the first question's key, so the next identical request is free.
                first_key = cache_key("template", writer.model or "", ask.messages(None))
                remember(session, [CacheWrite(first_key, "template", writer.model or "", draft.model_dump(),
                                              written.prompt_tokens, written.completion_tokens)])
            return replace(written, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        feedback = "; ".join(problems)
    raise InvalidInputError(f"The {writer.name} writer returned an invalid template twice.", details=problems)


def _save_written(session: Session, campaign: Campaign, step: int, variant: str, written: WrittenTemplate) -> Template:
    data = TemplateInput(step_number=step, variant=variant, subject=written.draft.subject, body=written.draft.body,
                         html_body=written.draft.html or None)
    return save_template(session, campaign, data, written)


def generate_templates(
    session: Session, campaign: Campaign, writer: TemplateWriter, steps: list[int] | None = None,
    overwrite: bool = False, *, variants: int = 1, use_ai_opener: bool = False, use_cache: bool = True,
) -> GenerationReport:
    """Write the templates of the given steps (default: every step) and variants A.., in order so follow-ups
    see earlier steps and each variant sees the ones before it. Existing ones are kept unless `overwrite`."""
    if not 1 <= variants <= MAX_VARIANTS:
        raise InvalidInputError(f"Between 1 and {MAX_VARIANTS} variants per step.")
    wanted = steps or [s.number for s in campaign.steps]
    for number in wanted:
        _require_step(campaign, number)
    existing = {(t.step_number, t.variant) for t in list_templates(session, campaign)}
    report = GenerationReport()
    fields = lead_fields(session, campaign)
    for number in sorted(wanted):
        for variant in VARIANTS[:variants]:
            if (number, variant) in existing and not overwrite:
                continue
            brief = step_brief(session, campaign, number, variant, use_ai_opener)
            ask = _Ask(call=lambda feedback, b=brief: writer.write(b, feedback),
                       messages=lambda feedback, b=brief: write_messages(b, feedback))
            written = _write_checked(session, writer, fields, ask, report, use_cache)
            report.templates.append(_save_written(session, campaign, number, variant, written))
            report.prompt_tokens += written.prompt_tokens
            report.completion_tokens += written.completion_tokens
    return report


def rewrite_template(
    session: Session, campaign: Campaign, template: Template, writer: TemplateWriter, instruction: str
) -> Template:
    brief = step_brief(session, campaign, template.step_number, template.variant)
    current = TemplateDraft(subject=template.subject, body=template.body)
    ask = _Ask(call=lambda feedback: writer.rewrite(brief, current, instruction, feedback),
               messages=lambda feedback: rewrite_messages(brief, current, instruction, feedback))
    written = _write_checked(session, writer, lead_fields(session, campaign), ask, GenerationReport())
    return _save_written(session, campaign, template.step_number, template.variant, written)
