"""Table of mixed-language sentences with their expected "auto" split: (text, [(part, language), ...], clear).

`clear` marks cases a careful reader decides without doubt from the text alone. The others are kanji-only
text (Chinese or Japanese both write it) or text without letters; they are measured but not asserted.
Used by tests/test_language_id.py and bench/language_id.py.
"""

from __future__ import annotations

Case = tuple[str, list[tuple[str, str]], bool]

CASES: list[Case] = [
    # Chinese
    ("今天天气很好，我们去公园散步吧。", [("今天天气很好，我们去公园散步吧。", "ZH")], True),
    ("这是一个测试句子。", [("这是一个测试句子。", "ZH")], True),
    ("他说他明天不来了。", [("他说他明天不来了。", "ZH")], True),
    ("我买了3个苹果，花了15块钱。", [("我买了3个苹果，花了15块钱。", "ZH")], True),
    ("2024年是龙年。", [("2024年是龙年。", "ZH")], True),
    ("我的电话是138 0013 8000。", [("我的电话是138 0013 8000。", "ZH")], True),
    # Japanese
    ("東京タワーは本当に高いですね。", [("東京タワーは本当に高いですね。", "JP")], True),
    ("私はコーヒーが好きです。", [("私はコーヒーが好きです。", "JP")], True),
    ("ありがとうございます！", [("ありがとうございます！", "JP")], True),
    ("今日はいい天気ですね。", [("今日はいい天気ですね。", "JP")], True),
    ("コンピューター", [("コンピューター", "JP")], True),
    ("3時に駅で会いましょう。", [("3時に駅で会いましょう。", "JP")], True),
    ("価格は1000円です。", [("価格は1000円です。", "JP")], True),
    ("東京、大阪、京都に行きました。", [("東京、大阪、京都に行きました。", "JP")], True),
    # English
    ("Hello, how are you today?", [("Hello, how are you today?", "EN")], True),
    ("The quick brown fox jumps over the lazy dog.", [("The quick brown fox jumps over the lazy dog.", "EN")], True),
    ("I have 3 apples and 2 oranges.", [("I have 3 apples and 2 oranges.", "EN")], True),
    # Latin words inside Chinese
    ("我喜欢用Python写代码。", [("我喜欢用", "ZH"), ("Python", "EN"), ("写代码。", "ZH")], True),
    ("这个iPhone很贵。", [("这个", "ZH"), ("iPhone", "EN"), ("很贵。", "ZH")], True),
    ("今天的meeting取消了。", [("今天的", "ZH"), ("meeting", "EN"), ("取消了。", "ZH")], True),
    ("Hello，你好！", [("Hello，", "EN"), ("你好！", "ZH")], True),
    (
        "我们用GitHub管理代码，用Docker部署。",
        [("我们用", "ZH"), ("GitHub", "EN"), ("管理代码，用", "ZH"), ("Docker", "EN"), ("部署。", "ZH")],
        True,
    ),
    ("iPhone 15 Pro很好用。", [("iPhone 15 Pro", "EN"), ("很好用。", "ZH")], True),
    ("Python 3.12的新特性", [("Python 3.12", "EN"), ("的新特性", "ZH")], True),
    # Latin words inside Japanese
    ("私はPythonが好きです。", [("私は", "JP"), ("Python", "EN"), ("が好きです。", "JP")], True),
    ("このMacBookは速いです。", [("この", "JP"), ("MacBook", "EN"), ("は速いです。", "JP")], True),
    ("Thank you、ありがとう。", [("Thank you、", "EN"), ("ありがとう。", "JP")], True),
    # Chinese and Japanese sentences, and all three
    ("你好。こんにちは。", [("你好。", "ZH"), ("こんにちは。", "JP")], True),
    ("我爱你。愛してる。", [("我爱你。", "ZH"), ("愛してる。", "JP")], True),
    ("你好。こんにちは。Hello.", [("你好。", "ZH"), ("こんにちは。", "JP"), ("Hello.", "EN")], True),
    (
        "Good morning! おはようございます。早上好！",
        [("Good morning!", "EN"), ("おはようございます。", "JP"), ("早上好！", "ZH")],
        True,
    ),
    ("第3章は面白い。", [("第3章は面白い。", "JP")], True),
    ("你好，こんにちは。", [("你好，", "ZH"), ("こんにちは。", "JP")], True),
    ("OK，没问题。", [("OK，", "EN"), ("没问题。", "ZH")], True),
    ("今天我们学习日本語。", [("今天我们学习日本語。", "ZH")], True),
    ("先生、質問があります。", [("先生、質問があります。", "JP")], True),
    # Kanji only: both languages write these; the character repertoires decide where they can
    ("天気予報", [("天気予報", "JP")], False),
    ("日本語", [("日本語", "JP")], False),
    ("東京大学", [("東京大学", "JP")], False),
    ("图书馆", [("图书馆", "ZH")], False),
    ("中国人民", [("中国人民", "ZH")], False),
    ("2023年3月15日", [("2023年3月15日", "ZH")], False),
    # No letters at all: the default language
    ("12345", [("12345", "ZH")], False),
]
