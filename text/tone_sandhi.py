"""Mandarin tone sandhi on pypinyin finals, as the Bert-VITS2 front end applies it.

Finals are strings such as ``"ian4"`` whose last character is the tone (``"5"`` = neutral).
Two steps, both driven by a jieba part-of-speech segmentation of one sentence piece:

1. `ToneSandhi.pre_merge_for_modify` joins segments that must be judged together
   ("不" + next word, "X一X", reduplications, runs of third tones, "儿").
2. `ToneSandhi.modified_tone` rewrites the tones of one word: 不, 一, neutral-tone words and
   particles, and third-tone sandhi.

The rules and the two word lists below follow the behaviour of the reference front end
(which took them from PaddleSpeech); the lists are lexical data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from pypinyin import Style, lazy_pinyin

# Words whose last syllable is read in the neutral tone.
_MUST_NEUTRAL_WORDS = """
麻烦 麻利 鸳鸯 高粱 骨头 骆驼 马虎 首饰 馒头 馄饨 风筝 难为 队伍 阔气 闺女 门道 锄头 铺盖 铃铛 铁匠 钥匙 里脊
里头 部分 那么 道士 造化 迷糊 连累 这么 这个 运气 过去 软和 转悠 踏实 跳蚤 跟头 趔趄 财主 豆腐 讲究 记性 记号
认识 规矩 见识 裁缝 补丁 衣裳 衣服 衙门 街坊 行李 行当 蛤蟆 蘑菇 薄荷 葫芦 葡萄 萝卜 荸荠 苗条 苗头 苍蝇 芝麻
舒服 舒坦 舌头 自在 膏药 脾气 脑袋 脊梁 能耐 胳膊 胭脂 胡萝 胡琴 胡同 聪明 耽误 耽搁 耷拉 耳朵 老爷 老实 老婆
老头 老太 翻腾 罗嗦 罐头 编辑 结实 红火 累赘 糨糊 糊涂 精神 粮食 簸箕 篱笆 算计 算盘 答应 笤帚 笑语 笑话 窟窿
窝囊 窗户 稳当 稀罕 称呼 秧歌 秀气 秀才 福气 祖宗 砚台 码头 石榴 石头 石匠 知识 眼睛 眯缝 眨巴 眉毛 相声 盘算
白净 痢疾 痛快 疟疾 疙瘩 疏忽 畜生 生意 甘蔗 琵琶 琢磨 琉璃 玻璃 玫瑰 玄乎 狐狸 状元 特务 牲口 牙碜 牌楼 爽快
爱人 热闹 烧饼 烟筒 烂糊 点心 炊帚 灯笼 火候 漂亮 滑溜 溜达 温和 清楚 消息 浪头 活泼 比方 正经 欺负 模糊 槟榔
棺材 棒槌 棉花 核桃 栅栏 柴火 架势 枕头 枇杷 机灵 本事 木头 木匠 朋友 月饼 月亮 暖和 明白 时候 新鲜 故事 收拾
收成 提防 挖苦 挑剔 指甲 指头 拾掇 拳头 拨弄 招牌 招呼 抬举 护士 折腾 扫帚 打量 打算 打点 打扮 打听 打发 扎实
扁担 戒指 懒得 意识 意思 情形 悟性 怪物 思量 怎么 念头 念叨 快活 忙活 志气 心思 得罪 张罗 弟兄 开通 应酬 庄稼
干事 帮手 帐篷 希罕 师父 师傅 巴结 巴掌 差事 工夫 岁数 屁股 尾巴 少爷 小气 小伙 将就 对头 对付 寡妇 家伙 客气
实在 官司 学问 学生 字号 嫁妆 媳妇 媒人 婆家 娘家 委屈 姑娘 姐夫 妯娌 妥当 妖精 奴才 女婿 头发 太阳 大爷 大方
大意 大夫 多少 多么 外甥 壮实 地道 地方 在乎 困难 嘴巴 嘱咐 嘟囔 嘀咕 喜欢 喇嘛 喇叭 商量 唾沫 哑巴 哈欠 哆嗦
咳嗽 和尚 告诉 告示 含糊 吓唬 后头 名字 名堂 合同 吆喝 叫唤 口袋 厚道 厉害 千斤 包袱 包涵 匀称 勤快 动静 动弹
功夫 力气 前头 刺猬 刺激 别扭 利落 利索 利害 分析 出息 凑合 凉快 冷战 冤枉 冒失 养活 关系 先生 兄弟 便宜 使唤
佩服 作坊 体面 位置 似的 伙计 休息 什么 人家 亲戚 亲家 交情 云彩 事情 买卖 主意 丫头 丧气 两口 东西 东家 世故
不由 不在 下水 下巴 上头 上司 丈夫 丈人 一辈 那个 菩萨 父亲 母亲 咕噜 邋遢 费用 冤家 甜头 介绍 荒唐 大人 泥鳅
幸福 熟悉 计划 扑腾 蜡烛 姥爷 照顾 喉咙 吉他 弄堂 蚂蚱 凤凰 拖沓 寒碜 糟蹋 倒腾 报复 逻辑 盘缠 喽啰 牢骚 咖喱
扫把 惦记
"""
# Words that look like neutral-tone candidates (reduplication, -子) but keep their full tone.
_MUST_NOT_NEUTRAL_WORDS = "男子 女子 分子 原子 量子 莲子 石子 瓜子 电子 人人 虎虎"

# Punctuation after which "一" keeps its first tone.
_PUNCTUATION = "：，；。？！“”‘’':,;.?!"
_SENTENCE_PARTICLES = "吧呢啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
_STRUCTURAL_PARTICLES = "的地得"
_MEASURE_WORD_PRECEDERS = "几有两半多各整每做是"
_DIRECTION_PREFIXES = "上下进出回过起开"

Segment = list  # [word, pos], mutable so merges can extend the word in place


def _tone(final: str) -> str:
    return final[-1] if final else ""


def _set_tone(finals: list[str], index: int, tone: str) -> None:
    finals[index] = finals[index][:-1] + tone


def _all_third_tone(finals: Sequence[str]) -> bool:
    return all(_tone(f) == "3" for f in finals)


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def _finals_tone3(word: str) -> list[str]:
    return lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)


class ToneSandhi:
    """Tone sandhi rules; `search_cut` splits a word into sub-words (jieba's search mode)."""

    def __init__(self, search_cut: Callable[[str], Iterable[str]] | None = None) -> None:
        if search_cut is None:
            import jieba

            search_cut = jieba.cut_for_search
        self._search_cut = search_cut
        self.must_neutral_words = frozenset(_MUST_NEUTRAL_WORDS.split())
        self.must_not_neutral_words = frozenset(_MUST_NOT_NEUTRAL_WORDS.split())

    # ----------------------------------------------------------------- segment merging
    def pre_merge_for_modify(self, seg: Iterable[Sequence[str]]) -> list[Segment]:
        """Merge jieba `(word, pos)` segments so that each sandhi domain is one word."""
        merged = [[word, pos] for word, pos in seg]
        merged = self._merge_bu(merged)
        merged = self._merge_yi(merged)
        merged = self._merge_reduplication(merged)
        merged = self._merge_third_tone_words(merged)
        merged = self._merge_third_tone_boundary(merged)
        merged = self._merge_er(merged)
        return merged

    @staticmethod
    def _merge_bu(seg: list[Segment]) -> list[Segment]:
        # A lone "不" is glued to the word after it so _bu_sandhi sees its neighbour.
        out: list[Segment] = []
        pending_bu = False
        for word, pos in seg:
            if pending_bu:
                word = "不" + word
            pending_bu = word == "不"
            if not pending_bu:
                out.append([word, pos])
        if pending_bu:
            out.append(["不", "d"])
        return out

    @staticmethod
    def _merge_yi(seg: list[Segment]) -> list[Segment]:
        # "听 一 听" (verb reduplication around 一) becomes one word "听一听". The reference
        # addresses its output list by input position, which breaks (and then skips this whole
        # merge) once an earlier merge has shifted positions; here the previous output word is
        # always the one extended, which is what it intends.
        out: list[Segment] = []
        i = 0
        while i < len(seg):
            word, pos = seg[i]
            is_v_yi_v = (
                word == "一" and 0 < i < len(seg) - 1 and seg[i - 1][0] == seg[i + 1][0] and seg[i - 1][1] == "v"
            )
            if is_v_yi_v and out:
                out[-1][0] = out[-1][0] + "一" + out[-1][0]
                i += 2
            else:
                out.append([word, pos])
                i += 1
        # A lone "一" is glued to the word after it (it keeps the pos of "一").
        glued: list[Segment] = []
        for word, pos in out:
            if glued and glued[-1][0] == "一":
                glued[-1][0] += word
            else:
                glued.append([word, pos])
        return glued

    @staticmethod
    def _merge_reduplication(seg: list[Segment]) -> list[Segment]:
        out: list[Segment] = []
        for word, pos in seg:
            if out and out[-1][0] == word:
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    @staticmethod
    def _merge_third_tone_runs(seg: list[Segment], joins: Callable[[list[str], list[str]], bool]) -> list[Segment]:
        # Join a word to its predecessor when `joins` holds on their finals, unless the
        # predecessor was itself just joined, is a reduplication, or the result exceeds 3 chars.
        finals = [_finals_tone3(word) for word, _ in seg]
        out: list[Segment] = []
        previous_joined = False
        for i, (word, pos) in enumerate(seg):
            joined = False
            if i > 0 and not previous_joined and joins(finals[i - 1], finals[i]):
                previous = seg[i - 1][0]
                if not _is_reduplication(previous) and len(previous) + len(word) <= 3:
                    out[-1][0] += word
                    joined = True
            if not joined:
                out.append([word, pos])
            previous_joined = joined
        return out

    def _merge_third_tone_words(self, seg: list[Segment]) -> list[Segment]:
        return self._merge_third_tone_runs(seg, lambda left, right: _all_third_tone(left) and _all_third_tone(right))

    def _merge_third_tone_boundary(self, seg: list[Segment]) -> list[Segment]:
        return self._merge_third_tone_runs(
            seg,
            lambda left, right: bool(left and right) and _tone(left[-1]) == "3" and _tone(right[0]) == "3",
        )

    @staticmethod
    def _merge_er(seg: list[Segment]) -> list[Segment]:
        out: list[Segment] = []
        for i, (word, pos) in enumerate(seg):
            if i > 0 and word == "儿" and seg[i - 1][0] != "#":
                out[-1][0] += word
            else:
                out.append([word, pos])
        return out

    # ------------------------------------------------------------------- tone changes
    def modified_tone(self, word: str, pos: str, finals: list[str]) -> list[str]:
        """Apply 不, 一, neutral-tone and third-tone sandhi to the finals of one word."""
        finals = list(finals)
        self._bu_sandhi(word, finals)
        self._yi_sandhi(word, finals)
        finals = self._neutral_sandhi(word, pos, finals)
        finals = self._third_tone_sandhi(word, finals)
        return finals

    @staticmethod
    def _bu_sandhi(word: str, finals: list[str]) -> None:
        if len(word) == 3 and word[1] == "不":  # 看不懂: the infix 不 is neutral
            _set_tone(finals, 1, "5")
            return
        for i, char in enumerate(word[:-1]):
            if char == "不" and _tone(finals[i + 1]) == "4":  # 不怕 → bu2
                _set_tone(finals, i, "2")

    @staticmethod
    def _yi_sandhi(word: str, finals: list[str]) -> None:
        if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):
            return  # digit strings (一零零) keep yi1
        if len(word) == 3 and word[1] == "一" and word[0] == word[2]:  # 看一看
            _set_tone(finals, 1, "5")
        elif word.startswith("第一"):  # ordinal
            _set_tone(finals, 1, "1")
        else:
            for i, char in enumerate(word[:-1]):
                if char != "一":
                    continue
                if _tone(finals[i + 1]) == "4":  # 一段 → yi2
                    _set_tone(finals, i, "2")
                elif word[i + 1] not in _PUNCTUATION:  # 一天 → yi4
                    _set_tone(finals, i, "4")

    def _is_neutral_word(self, word: str) -> bool:
        return word in self.must_neutral_words or word[-2:] in self.must_neutral_words

    def _neutral_sandhi(self, word: str, pos: str, finals: list[str]) -> list[str]:
        if pos and pos[0] in "nva" and word not in self.must_not_neutral_words:
            for j in range(1, len(word)):  # reduplicated nouns/verbs/adjectives: 奶奶, 试试
                if word[j] == word[j - 1]:
                    _set_tone(finals, j, "5")
        self._neutral_last_syllable(word, pos, finals)
        # Also look at the word's two sub-words (e.g. a neutral-tone word followed by a suffix).
        first, second = self._split_word(word)
        parts = [finals[: len(first)], finals[len(first) :]]
        for part_word, part_finals in zip((first, second), parts):
            if part_finals and self._is_neutral_word(part_word):
                _set_tone(part_finals, len(part_finals) - 1, "5")
        return parts[0] + parts[1]

    def _neutral_last_syllable(self, word: str, pos: str, finals: list[str]) -> None:
        ge_index = word.find("个")
        last = len(finals) - 1
        if word[-1] in _SENTENCE_PARTICLES or word[-1] in _STRUCTURAL_PARTICLES:
            _set_tone(finals, last, "5")
        elif len(word) > 1 and word[-1] in "们子" and pos in {"r", "n"} and word not in self.must_not_neutral_words:
            _set_tone(finals, last, "5")
        elif len(word) > 1 and word[-1] in "上下里" and pos in {"s", "l", "f"}:  # 桌上, 家里
            _set_tone(finals, last, "5")
        elif len(word) > 1 and word[-1] in "来去" and word[-2] in _DIRECTION_PREFIXES:  # 上来
            _set_tone(finals, last, "5")
        elif word == "个" or (
            ge_index >= 1 and (word[ge_index - 1].isnumeric() or word[ge_index - 1] in _MEASURE_WORD_PRECEDERS)
        ):  # 个 as a measure word
            _set_tone(finals, ge_index, "5")
        elif self._is_neutral_word(word):
            _set_tone(finals, last, "5")

    def _split_word(self, word: str) -> tuple[str, str]:
        # The shortest search-mode sub-word, plus the rest of the word on its other side.
        shortest = min(self._search_cut(word), key=len)
        if word.find(shortest) == 0:
            return shortest, word[len(shortest) :]
        return word[: -len(shortest)], shortest

    def _third_tone_sandhi(self, word: str, finals: list[str]) -> list[str]:
        if len(word) == 2 and _all_third_tone(finals):
            _set_tone(finals, 0, "2")
        elif len(word) == 3:
            first, _ = self._split_word(word)
            if _all_third_tone(finals):
                if len(first) == 2:  # 蒙古/包
                    _set_tone(finals, 0, "2")
                    _set_tone(finals, 1, "2")
                elif len(first) == 1:  # 纸/老虎
                    _set_tone(finals, 1, "2")
            else:
                head, tail = finals[: len(first)], finals[len(first) :]
                if _all_third_tone(head) and len(head) == 2:  # 所有/人
                    _set_tone(head, 0, "2")
                if _all_third_tone(tail) and len(tail) == 2:
                    _set_tone(tail, 0, "2")
                elif tail and not _all_third_tone(tail) and _tone(tail[0]) == "3" and _tone(head[-1]) == "3":
                    _set_tone(head, len(head) - 1, "2")  # 好/喜欢
                finals = head + tail
        elif len(word) == 4:  # idioms: two two-syllable halves
            for start in (0, 2):
                if _all_third_tone(finals[start : start + 2]):
                    _set_tone(finals, start, "2")
        return finals
