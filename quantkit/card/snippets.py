"""The run snippets of the card: code per runtime, keyed as CardFacts.runtimes name them, and their filling."""
from __future__ import annotations

# Snippets, filled by fill(): {repo} the Hub id (or placeholder), {name} the folder name, the values
# of common_values() and the backend's snippet_values(). "each" is repeated for every row of the
# backend's snippet_rows() (GGUF: one per file) and put where {each} stands; the first row fills the rest.
SNIPPETS: dict[str, dict] = {
    "vllm": {
        "title": "vLLM",
        "lang": "bash",
        "code": "pip install vllm\n"
                "vllm serve {repo}\n"
                "# an OpenAI-compatible API on http://localhost:8000; from another shell:\n"
                "{request}",
    },
    "transformers": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate compressed-tensors\n" + "{transformers}",
    },
    "transformers-gptq": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate optimum gptqmodel\n" + "{transformers}",
    },
    "transformers-awq": {
        "title": "transformers",
        "lang": "python",
        "code": "# pip install transformers accelerate gptqmodel\n" + "{transformers}",
    },
    "llama.cpp": {
        "title": "llama.cpp",
        "lang": "bash",
        "code": "# chat in the terminal; llama.cpp downloads the file from the Hub\n"
                "{each}"
                "# the same as an OpenAI-compatible server on http://localhost:8080\n"
                "llama-server -hf {repo}:{tag}\n"
                "# or a file you have downloaded\n"
                "hf download {repo} {file} --local-dir .\n"
                "llama-cli -m {file}\n",
        "each": "llama-cli -hf {repo}:{tag}    # {file}, {size}\n",
    },
    "ollama": {
        "title": "Ollama",
        "lang": "bash",
        "code": "{each}"
                "{modelfile_steps}",
        "each": "ollama run hf.co/{repo}:{tag}\n",
    },
    "exllamav2": {
        "title": "exllamav2",
        "lang": "python",
        "code": "# pip install exllamav2   (CUDA only)\n"
                "# hf download {repo} --local-dir {name}\n"
                "from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config, ExLlamaV2Tokenizer\n"
                "from exllamav2.generator import ExLlamaV2DynamicGenerator\n"
                "\n"
                "config = ExLlamaV2Config(\"{name}\")\n"
                "model = ExLlamaV2(config)\n"
                "cache = ExLlamaV2Cache(model, max_seq_len={ctx}, lazy=True)\n"
                "model.load_autosplit(cache, progress=True)\n"
                "tokenizer = ExLlamaV2Tokenizer(config)\n"
                "generator = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=tokenizer)\n"
                "print(generator.generate(prompt=\"{prompt}\", max_new_tokens=100, add_bos=True))\n",
    },
}

_TRANSFORMERS_BODY = (
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "\n"
    "model_id = \"{repo}\"\n"
    "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
    "model = AutoModelForCausalLM.from_pretrained(model_id, dtype=\"auto\", device_map=\"auto\")\n"
    "\n"
    "{inputs}"
    "output = model.generate(**inputs, max_new_tokens=64)\n"
    "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n"
)
_CHAT_INPUTS = (
    "messages = [{\"role\": \"user\", \"content\": \"Write a haiku about quantization.\"}]\n"
    "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,\n"
    "                                       return_tensors=\"pt\").to(model.device)\n"
)
_PLAIN_INPUTS = "inputs = tokenizer(\"The capital of France is\", return_tensors=\"pt\").to(model.device)\n"
_CHAT_REQUEST = ("curl http://localhost:8000/v1/chat/completions -H \"Content-Type: application/json\" \\\n"
                 "  -d '{\"model\": \"{repo}\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'\n")
_PLAIN_REQUEST = ("curl http://localhost:8000/v1/completions -H \"Content-Type: application/json\" \\\n"
                  "  -d '{\"model\": \"{repo}\", \"prompt\": \"The capital of France is\", \"max_tokens\": 32}'\n")


def common_values(repo: str, name: str, chat: bool) -> dict[str, str]:
    """The values every snippet may use; `chat`: the model has a chat template."""
    return {
        "repo": repo, "name": name,
        "request": fill(_CHAT_REQUEST if chat else _PLAIN_REQUEST, repo=repo),
        "transformers": fill(_TRANSFORMERS_BODY, repo=repo, inputs=_CHAT_INPUTS if chat else _PLAIN_INPUTS),
        "prompt": "Once upon a time,",
    }


def fill(template: str, **values: str) -> str:
    """Replace {key} for the given keys only (snippets hold JSON and Python braces)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", str(v))
    return template
