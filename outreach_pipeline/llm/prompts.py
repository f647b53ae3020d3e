"""Every prompt in one place. Bump PROMPT_VERSION whenever the wording changes: it is recorded on each
template and opener, and it is part of the answer-cache key, so a new wording never reuses old answers."""

from __future__ import annotations

from outreach_pipeline.llm.brief import OpenerBrief, StepBrief, TemplateDraft

PROMPT_VERSION = "2026-11-24.2"

Messages = list[dict[str, str]]

SYSTEM = (
    "You write short, honest, personal cold emails for B2B outreach. Plain text, no markdown, "
    "no images, no links unless given. Under 120 words. Use lead placeholders in double braces, "
    "only from the list you are given, and give a fallback for names that may be missing, "
    "like {{first_name|there}}. Never invent facts about the lead. Avoid spammy words (free, guarantee, "
    "act now) and words in capitals. Set html to null unless asked for HTML."
)

ROLE_GUIDANCE = {
    "first touch": "Introduce the offer in one or two sentences and end with one low-effort question.",
    "bump": "A short follow-up: add one new angle or proof point; do not repeat the earlier emails.",
    "break-up": "The last email: polite, two or three sentences, say you will not write again.",
}

OPENER_SYSTEM = (
    "You write the opening line of a cold email to one person: one sentence, under 30 words, in the "
    "given tone, based only on the facts given about them. No greeting, no sign-off, no placeholders or "
    "braces, no line breaks. Never invent facts (news, funding, posts) you were not given."
)


def _brief_text(brief: StepBrief) -> str:
    lines = [
        f"Campaign: {brief.campaign_name}",
        f"What we offer: {brief.pitch or '(not given)'}",
        f"Tone: {brief.tone}",
        f"Sender: {brief.sender_name or '(not given)'}",
        f"This is email {brief.step_number} of {brief.total_steps} ({brief.role}). {ROLE_GUIDANCE[brief.role]}",
        "Placeholders you may use: " + ", ".join("{{" + f + "}}" for f in brief.available_fields),
    ]
    if brief.use_ai_opener and brief.step_number == 1:
        lines.append("Put the placeholder {{ai_opener}} on its own line right after the greeting: "
                     "it holds an opening sentence written for each lead.")
    if brief.sample_lead:
        sample = ", ".join(f"{k}={v}" for k, v in sorted(brief.sample_lead.items()))
        lines.append(f"A sample lead, to see what placeholders hold (do not copy its values): {sample}")
    for number, previous in enumerate(brief.previous_steps, start=1):
        lines.append(f"Email {number} already says (do not repeat it):\nSubject: {previous.subject}\n{previous.body}")
    if brief.other_variants:
        lines.append(f"This is variant {brief.variant} of an A/B test: take a clearly different angle and "
                     "subject from the other variants:")
        lines.extend(f"Subject: {other.subject}\n{other.body}" for other in brief.other_variants)
    return "\n".join(lines)


def write_messages(brief: StepBrief, feedback: str | None = None) -> Messages:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": _brief_text(brief)}]
    if feedback:
        messages.append({"role": "user", "content": f"Your previous answer was refused: {feedback}. Fix it."})
    return messages


def rewrite_messages(
    brief: StepBrief, current: TemplateDraft, instruction: str, feedback: str | None = None
) -> Messages:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _brief_text(brief)},
        {
            "role": "user",
            "content": f"Rewrite this email. Instruction: {instruction}\nSubject: {current.subject}\n{current.body}",
        },
    ]
    if feedback:
        messages.append({"role": "user", "content": f"Your previous answer was refused: {feedback}. Fix it."})
    return messages


def opener_messages(brief: OpenerBrief, feedback: str | None = None) -> Messages:
    facts = "\n".join(f"- {name}: {value}" for name, value in sorted(brief.lead_fields.items()))
    messages = [
        {"role": "system", "content": OPENER_SYSTEM},
        {"role": "user", "content": (
            f"Campaign: {brief.campaign_name}\nWhat we offer: {brief.pitch or '(not given)'}\n"
            f"Tone: {brief.tone}\nWhat we know about the person:\n{facts or '- (nothing)'}"
        )},
    ]
    if feedback:
        messages.append({"role": "user", "content": f"Your previous answer was refused: {feedback}. Fix it."})
    return messages
