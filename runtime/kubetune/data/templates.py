"""XTuner's prompt templates and system prompts, string for string, so configs and checkpoints carry over.

Each turn renders as `SYSTEM.format(system)` (only when the turn has a system text) + `INSTRUCTION.format(input,
round)`, then the output + SUFFIX (with loss), then the EOS token unless SUFFIX_AS_EOS, then SEP between turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Template:
    instruction: str
    system: str = ""
    suffix: str = ""
    suffix_as_eos: bool = False
    sep: str = ""
    stop_words: tuple[str, ...] = field(default_factory=tuple)

    def render_input(self, text: str, system: str | None = None, round: int = 1) -> str:
        prefix = self.system.format(system=system) if system and self.system else ""
        return prefix + self.instruction.format(input=text, round=round)

    @property
    def need_eos_token(self) -> bool:
        return not self.suffix_as_eos


_CHATML_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n"
_CHATML_INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions. {system}\n ")
_DEEPSEEK_CODER_SYSTEM = ("You are an AI programming assistant, utilizing the DeepSeek Coder model, developed by "
                          "DeepSeekCompany, and you only answer questions related to computer science. For "
                          "politically sensitive questions, security and privacy issues, and other non-computer "
                          "science questions, you will refuse to answer. {system}\n")
_INST = Template(system="[INST] {system} [/INST]\n", instruction="[INST] {input} [/INST]", sep="\n")
_DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"

PROMPT_TEMPLATES: dict[str, Template] = {
    "default": Template(system="<|System|>:{system}\n", instruction="<|User|>:{input}\n<|Bot|>:", sep="\n"),
    "zephyr": Template(system="<|system|>\n{system}\n", instruction="<|user|>\n{input}\n<|assistant|>\n", sep="\n"),
    "internlm_chat": Template(system="<|System|>:{system}\n", instruction="<|User|>:{input}<eoh>\n<|Bot|>:",
                              suffix="<eoa>", suffix_as_eos=True, sep="\n", stop_words=("<eoa>",)),
    "internlm2_chat": Template(system=_CHATML_SYSTEM, instruction=_CHATML_INSTRUCTION, suffix="<|im_end|>",
                               suffix_as_eos=True, sep="\n", stop_words=("<|im_end|>",)),
    "moss_sft": Template(system="{system}\n", instruction="<|Human|>: {input}<eoh>\n", sep="\n",
                         stop_words=("<eoc>", "<eom>")),
    "llama2_chat": Template(
        system="[INST] <<SYS>>\n You are a helpful, respectful and honest assistant. Always answer as helpfully as "
               "possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, "
               "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and "
               "positive in nature.\n{system}\n<</SYS>>\n [/INST] ",
        instruction="[INST] {input} [/INST]", sep="\n"),
    "code_llama_chat": Template(system="{system}\n", instruction="[INST] {input} [/INST]"),
    "chatglm2": Template(system="{system}\n", instruction="[Round {round}]\n\n问：{input}\n\n答：", sep="\n\n"),
    "chatglm3": Template(system="<|system|>\n{system}", instruction="<|user|>\n{input}<|assistant|>\n", sep="\n"),
    "qwen_chat": Template(system=_CHATML_SYSTEM, instruction=_CHATML_INSTRUCTION, suffix="<|im_end|>",
                          suffix_as_eos=True, sep="\n", stop_words=("<|im_end|>", "<|endoftext|>")),
    "baichuan_chat": Template(system="{system}\n", instruction="<reserved_102>{input}<reserved_103>", sep="\n"),
    "baichuan2_chat": Template(system="{system}\n", instruction="<reserved_106>{input}<reserved_107>", sep="\n"),
    "wizardlm": Template(system=_VICUNA_SYSTEM, instruction="USER: {input} ASSISTANT:", sep="\n"),
    "wizardcoder": Template(
        system="Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n{system}\n ",
        instruction="### Instruction:\n{input}\n\n### Response:", sep="\n\n"),
    "vicuna": Template(system=_VICUNA_SYSTEM, instruction="USER: {input} ASSISTANT:", sep="\n"),
    "deepseek_coder": Template(system=_DEEPSEEK_CODER_SYSTEM, instruction="### Instruction:\n{input}\n### Response:\n",
                               sep="\n"),
    "deepseekcoder": Template(system=_DEEPSEEK_CODER_SYSTEM, instruction="### Instruction:\n{input}\n### Response:\n",
                              sep="\n"),
    "deepseek_moe": _INST,
    "deepseek_v2": Template(system="{system}\n\n", instruction="User: {input}\n\nAssistant: ", suffix=_DEEPSEEK_EOS,
                            suffix_as_eos=True, stop_words=(_DEEPSEEK_EOS,)),
    "mistral": _INST,
    "mixtral": _INST,
    "minicpm": Template(instruction="<用户> {input} <AI>", sep="\n"),
    "minicpm3": Template(system=_CHATML_SYSTEM, instruction=_CHATML_INSTRUCTION, suffix="<|im_end|>",
                         suffix_as_eos=True, sep="\n", stop_words=("<|im_end|>", "<|endoftext|>")),
    "gemma": Template(system="<start_of_turn>system\n{system}<end_of_turn>\n",
                      instruction="<start_of_turn>user\n{input}<end_of_turn>\n<start_of_turn>model\n",
                      suffix="<end_of_turn>", suffix_as_eos=False, sep="\n", stop_words=("<end_of_turn>",)),
    "cohere_chat": Template(
        system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{system}<|END_OF_TURN_TOKEN|>",
        instruction="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{input}<|END_OF_TURN_TOKEN|>"
                    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        suffix="<|END_OF_TURN_TOKEN|>", suffix_as_eos=True, stop_words=("<|END_OF_TURN_TOKEN|>",)),
    "llama3_chat": Template(
        system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        instruction="<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
        suffix="<|eot_id|>", suffix_as_eos=True, stop_words=("<|eot_id|>",)),
    "phi3_chat": Template(system="<|system|>\n{system}<|end|>\n", instruction="<|user|>\n{input}<|end|>\n<|assistant|>\n",
                          suffix="<|end|>", suffix_as_eos=True, sep="\n", stop_words=("<|end|>",)),
}

SYSTEM_TEMPLATES: dict[str, str] = {
    "moss_sft": ("You are an AI assistant whose name is {bot_name}.\n"
                 "Capabilities and tools that {bot_name} can possess.\n"
                 "- Inner thoughts: enabled.\n"
                 "- Web search: enabled. API: Search(query)\n"
                 "- Calculator: enabled. API: Calculate(expression)\n"
                 "- Equation solver: enabled. API: Solve(equation)\n"
                 "- Text-to-image: disabled.\n"
                 "- Image edition: disabled.\n"
                 "- Text-to-speech: disabled.\n"),
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n",
    "arxiv_gentile": "If you are an expert in writing papers, please generate a good paper title for this paper based "
                     "on other authors' descriptions of their abstracts.\n",
    "colorist": "You are a professional color designer. Please provide the corresponding colors based on the "
                "description of Human.\n",
    "coder": "You are a professional programer. Please provide the corresponding code based on the description of "
             "Human.\n",
    "lawyer": "你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n",
    "medical": "如果你是一名医生，请根据患者的描述回答医学问题。\n",
    "sql": "If you are an expert in SQL, please generate a good SQL Query for Question based on the CREATE TABLE "
           "statement.\n",
}


def system_text(system: str | None, system_template: str | None, bot_name: str = "BOT") -> str | None:
    """The system prompt a spec asks for: its own text, or a predefined one (moss_sft gets the bot name)."""
    if system_template:
        return SYSTEM_TEMPLATES[system_template].format(bot_name=bot_name)
    return system
