"""What the Messages and Responses tests share: the fake upstreams' keys and one tool in each
protocol's shape. The fakes themselves are the ``fa`` / ``fr`` fixtures (tests/conftest.py)."""

KA, KO = "sk-ant-upstream-key-0001", "sk-openai-upstream-key-0002"  # the fakes refuse any other key
TOOLS = [{"name": "search", "description": "web search", "input_schema": {"type": "object"}}]  # Messages
FN = [{"type": "function", "name": "search", "parameters": {"type": "object", "properties": {}}}]  # Responses
