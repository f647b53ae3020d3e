"""Templates: checked before they are saved, written by a TemplateWriter, edited by people."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach_pipeline.core.errors import InvalidInputError, NotFoundError
from outreach_pipeline.core.leads import lead_fields
from outreach_pipeline.core.placeholders import find_placeholders, unbalanced_braces
from outreach_pipeline.db.models import Campaign, Template
from outreach_pipeline.llm.brief import StepBrief, TemplateDraft, TemplateWriter, WrittenTemplate

MAX_SUBJECT = 200
MAX_BODY = 10_000


class TemplateInput(BaseModel):
    step_number: int = Field(ge=1, le=10)
    variant: str = Field("A", pattern=r"^[A-Z]$")
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT)
    body: str = Field(min_length=1, max_length=MAX_BODY)


class TemplateEdit(BaseModel):
    subject: str | None = Field(None, min_length=1, max_length=MAX_SUBJECT)
    body: str | None = Field(None, min_length=1, max_length=MAX_BODY)


@dataclass
class GenerationReport:
    templates: list[Template] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def template_problems(subject: str, body: str, fields: list[str]) -> list[str]:
    problems: list[str] = []
    if not subject.strip():
        problems.append("The subject is empty.")
    if len(subject) > MAX_SUBJECT:
        problems.append(f"The subject is longer than {MAX_SUBJECT} characters.")
    if not body.strip():
        problems.append("The body is empty.")
    if len(body) > MAX_BODY:
        problems.append(f"The body is longer than {MAX_BODY} characters.")
    for part, text in (("subject", subject), ("body", body)):
        if unbalanced_braces(text):
            problems.append(f"The {part} has unbalanced placeholder braces.")
        for placeholder in find_placeholders(text):
            if placeholder.fallback is None and placeholder.name not in fields:
                problems.append(
                    f"Unknown field {{{{{placeholder.name}}}}} in the {part}; known fields: {', '.join(fields)}. "
                    f"Use a fallback like {{{{{placeholder.name}|...}}}} if some leads lack it."
                )
    return problems


def check_template(session: Session, campaign: Campaign, subject: str, body: str) -> None:
    problems = template_problems(subject, body, lead_fields(session, campaign))
    if problems:
        raise InvalidInputError("The template is not valid.", details=problems)


def _require_step(campaign: Campaign, step_number: int) -> None:
    if step_number not in {s.number for s in campaign.steps}:
        raise InvalidInputError(f"The campaign has no step {step_number}.")


def list_templates(session: Session, campaign: Campaign) -> list[Template]:
    return list(session.scalars(
        select(Template).where(Template.campaign_id == campaign.id).order_by(Template.step_number, Template.variant)
    ))


def get_template(session: Session, campaign: Campaign, template_id: int) -> Template:
    template = session.get(Template, template_id)
    if template is None or template.campaign_id != campaign.id:
        raise NotFoundError(f"Template {template_id} not found.")
    return template


def save_template(session: Session, campaign: Campaign, data: TemplateInput, written: WrittenTemplate | None = None) -> Template:
    """Create or replace the template of a step and variant after checking it."""
    _require_step(campaign, data.step_number)
    check_template(session, campaign, data.subject, data.body)
    template = session.scalar(select(Template).where(
        Template.campaign_id == campaign.id, Template.step_number == data.step_number, Template.variant == data.variant
    ))
    if template is None:
        template = Template(campaign_id=campaign.id, step_number=data.step_number, variant=data.variant)
        session.add(template)
    template.subject, template.body = data.subject, data.body
    template.source = written.source if written else "manual"
    template.model = written.model if written else None
    template.prompt_tokens = written.prompt_tokens if written else 0
    template.completion_tokens = written.completion_tokens if written else 0
    session.flush()
    return template


def edit_template(session: Session, campaign: Campaign, template: Template, data: TemplateEdit) -> Template:
    subject = data.subject if data.subject is not None else template.subject
    body = data.body if data.body is not None else template.body
    check_template(session, campaign, subject, body)
    template.subject, template.body, template.source = subject, body, "manual"
    session.flush()
    return template


def step_brief(session: Session, campaign: Campaign, step_number: int) -> StepBrief:
    earlier = [t for t in list_templates(session, campaign) if t.step_number < step_number and t.variant == "A"]
    return StepBrief(
        campaign_name=campaign.name,
        pitch=campaign.pitch,
        tone=campaign.tone,
        sender_name=campaign.sender_name,
        step_number=step_number,
        total_steps=len(campaign.steps),
        available_fields=lead_fields(session, campaign),
        previous_steps=[TemplateDraft(subject=t.subject, body=t.body) for t in earlier],
    )


def _write_checked(brief: StepBrief, writer: TemplateWriter, first: WrittenTemplate) -> WrittenTemplate:
    """Give the writer one more try with the reasons its first answer was refused."""
    problems = template_problems(first.draft.subject, first.draft.body, list(brief.available_fields))
    if not problems:
        return first
    second = writer.write(brief, feedback="; ".join(problems))
    problems = template_problems(second.draft.subject, second.draft.body, list(brief.available_fields))
    if problems:
        raise InvalidInputError(f"The {writer.name} writer returned an invalid template twice.", details=problems)
    return WrittenTemplate(second.draft, second.source, second.model,
                           first.prompt_tokens + second.prompt_tokens,
                           first.completion_tokens + second.completion_tokens)


def generate_templates(
    session: Session, campaign: Campaign, writer: TemplateWriter, steps: list[int] | None = None, overwrite: bool = False
) -> GenerationReport:
    """Write the templates of the given steps (default: every step), in order so follow-ups see earlier ones."""
    wanted = steps or [s.number for s in campaign.steps]
    for number in wanted:
        _require_step(campaign, number)
    existing = {t.step_number for t in list_templates(session, campaign) if t.variant == "A"}
    report = GenerationReport()
    for number in sorted(wanted):
        if number in existing and not overwrite:
            continue
        brief = step_brief(session, campaign, number)
        written = _write_checked(brief, writer, writer.write(brief))
        data = TemplateInput(step_number=number, subject=written.draft.subject, body=written.draft.body)
        report.templates.append(save_template(session, campaign, data, written))
        report.prompt_tokens += written.prompt_tokens
        report.completion_tokens += written.completion_tokens
    return report


def rewrite_template(
    session: Session, campaign: Campaign, template: Template, writer: TemplateWriter, instruction: str
) -> Template:
    brief = step_brief(session, campaign, template.step_number)
    current = TemplateDraft(subject=template.subject, body=template.body)
    written = _write_checked(brief, writer, writer.rewrite(brief, current, instruction))
    data = TemplateInput(step_number=template.step_number, variant=template.variant,
                         subject=written.draft.subject, body=written.draft.body)
    return save_template(session, campaign, data, written)
