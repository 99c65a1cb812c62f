from .deformable_detr import DeformableDETR
from .teacher_student import TeacherStudentRCNN
from .teacher_student_detr import TeacherStudentDETR

__all__ = ["DeformableDETR", "TeacherStudentDETR", "TeacherStudentRCNN"]
