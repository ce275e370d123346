"""A small live plot of training loss and validation Dice, drawn with QPainter.

matplotlib is not a dependency of the plugin, and two polylines do not need
it. x is training progress in epochs; loss is scaled to its own maximum (left
axis), Dice to [0, 1] (right axis).
"""

from __future__ import annotations

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor("#4fa3ff")
DICE_COLOR = QColor("#ffb000")
MARGIN = (34, 8, 34, 18)  # left, top, right, bottom (pixels)


class TrainingPlot(QWidget):
    """Loss per step and validation Dice per epoch against epochs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[float, float]] = []
        self.dice: list[tuple[float, float]] = []
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        self.loss.clear()
        self.dice.clear()
        self.update()

    def add_loss(self, x: float, value: float) -> None:
        self.loss.append((x, value))
        self.update()

    def add_dice(self, x: float, value: float) -> None:
        self.dice.append((x, value))
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        left, top, right, bottom = MARGIN
        area = QRectF(left, top, max(1, self.width() - left - right),
                      max(1, self.height() - top - bottom))
        text = self.palette().windowText().color()
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        # The x range follows the data: with a time limit the planned epochs may
        # be far more than the run will reach.
        x_max = max([1.0] + [x for x, _ in self.loss + self.dice])
        loss_max = max([v for _, v in self.loss] + [1e-6])
        if self.loss:
            painter.drawText(QRectF(0, top - 4, left - 4, 14), Qt.AlignmentFlag.AlignRight,
                             f"{loss_max:.2g}")
        painter.drawText(QRectF(area.right() + 4, top - 4, right, 14),
                         Qt.AlignmentFlag.AlignLeft, "1.0")
        painter.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), 14),
                         Qt.AlignmentFlag.AlignCenter,
                         f"epochs 0-{x_max:.3g}")
        inside = area.adjusted(4, 2, -4, -2)
        for color, align, name in ((LOSS_COLOR, Qt.AlignmentFlag.AlignLeft, "loss"),
                                   (DICE_COLOR, Qt.AlignmentFlag.AlignRight, "val Dice")):
            painter.setPen(QPen(color, 1))
            painter.drawText(inside, align | Qt.AlignmentFlag.AlignTop, name)
        self._line(painter, self.loss, area, x_max, loss_max, LOSS_COLOR, dots=False)
        self._line(painter, self.dice, area, x_max, 1.0, DICE_COLOR, dots=True)
        painter.end()

    @staticmethod
    def _line(painter: QPainter, points: list[tuple[float, float]], area: QRectF,
              x_max: float, y_max: float, color: QColor, dots: bool) -> None:
        if not points:
            return
        mapped = [QPointF(area.left() + area.width() * x / x_max,
                          area.bottom() - area.height() * min(max(y / y_max, 0.0), 1.0))
                  for x, y in points]
        painter.setPen(QPen(color, 1.5))
        painter.drawPolyline(QPolygonF(mapped))
        if dots:
            painter.setBrush(color)
            for p in mapped:
                painter.drawEllipse(p, 2.5, 2.5)
