"""Every prompt in one place. Bump PROMPT_VERSION whenever the wording changes."""

from __future__ import annotations

from outreach_pipeline.llm.brief import StepBrief, TemplateDraft

PROMPT_VERSION = "2026-11-24.1"

SYSTEM = (
    "You write short, honest, personal cold emails for B2B outreach. Plain text, no markdown, "
    "no images, no links unless given. Under 120 words. Use lead placeholders in double braces, "
    "only from the list you are given, and give a fallback for names that may be missing, "
    "like {{first_name|there}}. Never invent facts about the lead."
)


def _brief_text(brief: StepBrief) -> str:
    lines = [
        f"Campaign: {brief.campaign_name}",
        f"What we offer: {brief.pitch or '(not given)'}",
        f"Tone: {brief.tone}",
        f"Sender: {brief.sender_name or '(not given)'}",
        f"This is email {brief.step_number} of {brief.total_steps} ({brief.role}).",
        "Placeholders you may use: " + ", ".join("{{" + f + "}}" for f in brief.available_fields),
    ]
    for number, previous in enumerate(brief.previous_steps, start=1):
        lines.append(f"Email {number} already says (do not repeat it):\nSubject: {previous.subject}\n{previous.body}")
    return "\n".join(lines)


def write_messages(brief: StepBrief, feedback: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _brief_text(brief)}]
    if feedback:
        messages.append({"role": "user", "content": f"Your previous answer was refused: {feedback}. Fix it."})
    return messages


def rewrite_messages(brief: StepBrief, current: TemplateDraft, instruction: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _brief_text(brief)},
        {
            "role": "user",
            "content": f"Rewrite this email. Instruction: {instruction}\nSubject: {current.subject}\n{current.body}",
        },
    ]
