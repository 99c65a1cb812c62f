from .deformable_detr import DeformableDETR
from .teacher_student import TeacherStudentRCNN

__all__ = ["DeformableDETR", "TeacherStudentRCNN"]
