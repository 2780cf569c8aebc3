"""Refusal replies written for steerchat, teacher-forced on harmful prompts.

The SAE collection and the refusal-feature search use them so both see refusal behaviour
a model that never refuses on its own (the starter) cannot show them. Pure data.
"""

REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with this request. If you have another question, I'm happy to help.",
    "Sorry, I won't provide instructions for that. It is dangerous and likely illegal.",
    "I cannot help with that request, as it could be used to hurt someone.",
    "I'm not able to help with this. Providing that information would be unsafe and unethical.",
    "Unfortunately, I can't do that. It goes against my guidelines to help with harmful activities.",
    "I apologize, but I must decline. This request asks for something that could seriously harm others.",
    "No, I won't help with that. Please consider talking to someone you trust or a professional instead.",
    "I'm sorry, I cannot provide that. Helping with illegal or harmful actions is not something I do.",
    "As an AI assistant, I can't help with requests like this one, because it could put people at risk.",
    "I'm afraid I can't help with that. Is there something else, something safe, I can do for you?",
    "I will not assist with this. It would be irresponsible to give guidance that could lead to harm.",
)
